"""`dinp user|team|token …` and `dinp events`: accounts, and who changed what."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import typer
from rich.markup import escape

from dinp import validation
from dinp.commands.common import JsonOpt, ServerOpt, TokenOpt, client
from dinp.errors import InvalidInput
from dinp.output import console, print_json, table

users_cli = typer.Typer(no_args_is_help=True, help="People and robots who use dinp "
                        "(admins only, but for your own password).")
teams_cli = typer.Typer(no_args_is_help=True, help="Teams own apps; their members may "
                        "change them. Quotas limit what a team's apps ask for.")
tokens_cli = typer.Typer(no_args_is_help=True, help="Your API tokens, and CI tokens for "
                         "one app.")


def _when(at: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(at)) if at else "-"


def _size(value: str | None) -> str | None:
    """A quota size as typed (`64g`), checked before anything is sent."""
    if value is None or value == "none":
        return value
    try:
        validation.quota_memory(value)
    except InvalidInput as exc:
        raise typer.BadParameter(exc.reason) from None
    return value


def _read_password(stdin: bool) -> str:
    if stdin:
        return sys.stdin.readline().rstrip("\n")
    return str(typer.prompt("Password", hide_input=True, confirmation_prompt=True))


# -- users -------------------------------------------------------------------------------

@users_cli.command("create")
def user_create(
    name: str = typer.Argument(..., help="e.g. alice or alice@example.com"),
    admin: bool = typer.Option(False, "--admin", help="May manage nodes, users and teams."),
    team: list[str] = typer.Option([], "--team", help="A team to add the user to "
                                   "(repeatable)."),
    password: bool = typer.Option(False, "--password", help="Set a password (prompted) "
                                  "instead of making a first API token."),
    password_stdin: bool = typer.Option(False, "--password-stdin",
                                        help="Read the password from standard input."),
    as_json: bool = JsonOpt, server: str | None = ServerOpt, token: str | None = TokenOpt,
) -> None:
    """Create a user.

    Without a password, their first API token is printed once: hand it to them
    (`dinp login URL --token …`)."""
    body: dict[str, Any] = {"name": name, "admin": admin, "teams": team}
    if password or password_stdin:
        body["password"] = _read_password(password_stdin)
    reply = client(server, token).post("/users", body)
    if as_json:
        print_json(reply)
        return
    console.print(f"user {name} created ({reply['user']['role']})")
    if reply.get("token"):
        console.print(f"their API token (shown once): {reply['token']}")


@users_cli.command("list")
def user_list(as_json: bool = JsonOpt, server: str | None = ServerOpt,
              token: str | None = TokenOpt) -> None:
    """List users with their role and teams."""
    rows = client(server, token).get("/users")
    if as_json:
        print_json(rows)
        return
    table(None, ["USER", "ROLE", "TEAMS", "SIGN-IN", "STATE", "CREATED"], [
        (u["name"], u["role"], ", ".join(u["teams"]) or "-",
         "password, tokens" if u["password"] else "tokens",
         "disabled" if u["disabled"] else "active", _when(u["created_at"])) for u in rows])


@users_cli.command("disable")
def user_disable(name: str = typer.Argument(...),
                 undo: bool = typer.Option(False, "--undo", help="Enable the user again."),
                 server: str | None = ServerOpt, token: str | None = TokenOpt) -> None:
    """Disable a user: every token of theirs is refused from the next request."""
    user = client(server, token).post(f"/users/{name}/disable", {"undo": undo})
    console.print(f"user {name} is {'disabled' if user['disabled'] else 'enabled'}")


@users_cli.command("password")
def user_password(name: str = typer.Argument(..., help="Your user name (admins: anyone's)."),
                  password_stdin: bool = typer.Option(False, "--password-stdin"),
                  server: str | None = ServerOpt, token: str | None = TokenOpt) -> None:
    """Set a password, for `dinp login --user` and the Dashboard."""
    client(server, token).post(f"/users/{name}/password",
                               {"password": _read_password(password_stdin)})
    console.print(f"password of {name} set")


# -- teams -------------------------------------------------------------------------------

def _quota_body(memory: str | None, instances: int | None) -> dict[str, Any]:
    """What to send of a quota given at the CLI ('none' and -1: no limit)."""
    body: dict[str, Any] = {}
    if memory is not None:
        body["memory"] = None if memory == "none" else memory
    if instances is not None:
        body["instances"] = None if instances < 0 else instances
    return body


def _show_team(t: dict[str, Any]) -> None:
    q, u = t["quota"], t["usage"]
    mem = "no limit" if q["memory_mb"] is None else f"{q['memory_mb']}m"
    inst = "no limit" if q["instances"] is None else str(q["instances"])
    console.print(f"[bold]{t['name']}[/]  members: {', '.join(t['members']) or '-'}\n"
                  f"apps: {', '.join(t['apps']) or '-'}\n"
                  f"memory: {u['memory_mb']}m of {mem}; instances: {u['instances']} of {inst}")


MemoryQuotaOpt = typer.Option(None, "--memory", callback=_size,
                              help="All its apps' memory together, e.g. 64g ('none': no "
                              "limit).")
InstancesQuotaOpt = typer.Option(None, "--instances", min=-1,
                                 help="All its apps' instances together (-1: no limit).")


@teams_cli.command("create")
def team_create(name: str = typer.Argument(...), memory: str | None = MemoryQuotaOpt,
                instances: int | None = InstancesQuotaOpt, as_json: bool = JsonOpt,
                server: str | None = ServerOpt, token: str | None = TokenOpt) -> None:
    """Create a team (with a quota, if given)."""
    team = client(server, token).post("/teams", {"name": name, **_quota_body(memory, instances)})
    if as_json:
        print_json(team)
    else:
        console.print(f"team {name} created")


@teams_cli.command("list")
def team_list(as_json: bool = JsonOpt, server: str | None = ServerOpt,
              token: str | None = TokenOpt) -> None:
    """The teams you may see (admins: all), with what their apps ask for."""
    rows = client(server, token).get("/teams")
    if as_json:
        print_json(rows)
        return
    table(None, ["TEAM", "MEMBERS", "APPS", "MEMORY", "INSTANCES"], [
        (t["name"], len(t["members"]), len(t["apps"]),
         f"{t['usage']['memory_mb']}m / "
         + ("-" if t["quota"]["memory_mb"] is None else f"{t['quota']['memory_mb']}m"),
         f"{t['usage']['instances']} / "
         + ("-" if t["quota"]["instances"] is None else str(t["quota"]["instances"])))
        for t in rows])


@teams_cli.command("show")
def team_show(name: str = typer.Argument(...), as_json: bool = JsonOpt,
              server: str | None = ServerOpt, token: str | None = TokenOpt) -> None:
    """A team's members, apps, quota and what its apps ask for."""
    team = client(server, token).get(f"/teams/{name}")
    if as_json:
        print_json(team)
    else:
        _show_team(team)


@teams_cli.command("add-user")
def team_add_user(name: str = typer.Argument(..., help="Team."),
                  user: str = typer.Argument(..., help="User."),
                  server: str | None = ServerOpt, token: str | None = TokenOpt) -> None:
    """Add a user to a team: they may see and change its apps."""
    client(server, token).post(f"/teams/{name}/users", {"user": user})
    console.print(f"{user} is a member of team {name}")


@teams_cli.command("remove-user")
def team_remove_user(name: str = typer.Argument(..., help="Team."),
                     user: str = typer.Argument(..., help="User."),
                     server: str | None = ServerOpt, token: str | None = TokenOpt) -> None:
    """Remove a user from a team."""
    client(server, token).delete(f"/teams/{name}/users/{user}")
    console.print(f"{user} is no longer a member of team {name}")


@teams_cli.command("quota")
def team_quota(name: str = typer.Argument(...), memory: str | None = MemoryQuotaOpt,
               instances: int | None = InstancesQuotaOpt,
               server: str | None = ServerOpt, token: str | None = TokenOpt) -> None:
    """Set a team's quota; what is not given stays as it is."""
    api = client(server, token)
    body = _quota_body(memory, instances)
    team = api.post(f"/teams/{name}/quota", body) if body else api.get(f"/teams/{name}")
    _show_team(team)


@teams_cli.command("delete")
def team_delete(name: str = typer.Argument(...), server: str | None = ServerOpt,
                token: str | None = TokenOpt) -> None:
    """Delete a team that has no apps left."""
    client(server, token).delete(f"/teams/{name}")
    console.print(f"team {name} deleted")


# -- tokens ------------------------------------------------------------------------------

@tokens_cli.command("create")
def token_create(
    name: str = typer.Argument(..., help="What it is for, e.g. 'ci web'."),
    app: str | None = typer.Option(None, "--app", help="Only this app: read, deploy, "
                                   "restart, roll back (a CI pipeline's token)."),
    expires: str | None = typer.Option(None, "--expires", help="e.g. 90d, 12h, 1y "
                                       "(default: never)."),
    user: str | None = typer.Option(None, "--user", help="Whose token (admins only)."),
    as_json: bool = JsonOpt, server: str | None = ServerOpt, token: str | None = TokenOpt,
) -> None:
    """Make an API token; it is printed once (only its digest is kept)."""
    body: dict[str, Any] = {"name": name, "app": app}
    if expires is not None:
        try:
            body["expires_in"] = validation.duration(expires)
        except InvalidInput as exc:
            raise typer.BadParameter(exc.reason, param_hint="--expires") from None
    if user is not None:
        body["user"] = user
    reply = client(server, token).post("/tokens", body)
    if as_json:
        print_json(reply)
        return
    info = reply["info"]
    scope = f", app {app} only" if app else ""
    console.print(f"token {info['id']} ({name}{scope}; expires {_when(info['expires_at'])})"
                  f"\n{reply['token']}\nIt is shown once: keep it now.")


@tokens_cli.command("list")
def token_list(everyone: bool = typer.Option(False, "--all", help="Everyone's (admins)."),
               as_json: bool = JsonOpt, server: str | None = ServerOpt,
               token: str | None = TokenOpt) -> None:
    """Your tokens (never the secrets, only their first characters)."""
    rows = client(server, token).get("/tokens" + ("?all=true" if everyone else ""))
    if as_json:
        print_json(rows)
        return
    table(None, ["ID", "NAME", "USER", "APP", "STARTS", "STATE", "EXPIRES", "CREATED"], [
        (t["id"], t["name"], t["user"], t["app"] or "all", t["prefix"] + "…", t["state"],
         _when(t["expires_at"]), _when(t["created_at"])) for t in rows])


@tokens_cli.command("revoke")
def token_revoke(token_id: int = typer.Argument(..., min=1, help="Its ID (token list)."),
                 server: str | None = ServerOpt, token: str | None = TokenOpt) -> None:
    """Revoke a token: every server refuses it from the next request."""
    client(server, token).delete(f"/tokens/{token_id}")
    console.print(f"token {token_id} revoked")


# -- events ------------------------------------------------------------------------------

def events(
    app: str | None = typer.Option(None, "--app", "-a", help="Only this app's events."),
    user: str | None = typer.Option(None, "--user", "-u",
                                    help="Only the changes this user made."),
    limit: int = typer.Option(50, "--limit", "-n", min=1, max=1000),
    follow: bool = typer.Option(False, "--follow", "-f",
                                help="Then print new events as they happen, until Ctrl-C."),
    as_json: bool = JsonOpt, server: str | None = ServerOpt, token: str | None = TokenOpt,
) -> None:
    """What happened, newest first.

    Placements, starts, health changes, crashes, nodes down and up, deploys, and who
    changed what, when, from where. With --follow: oldest first, then each new one."""
    api = client(server, token)
    query = ([f"app={app}"] if app else []) + ([f"user={user}"] if user else [])
    rows = api.get("/events?" + "&".join([f"limit={limit}", *query]))
    if not follow:
        if as_json:
            print_json(rows)
        else:
            _events_table(rows)
        return
    last = max((e["id"] for e in rows), default=0)
    _print_events(list(reversed(rows)), as_json=as_json)
    try:
        while True:
            time.sleep(1.0)
            new = api.get("/events?" + "&".join([f"after={last}", "limit=1000", *query]))
            if new:
                last = max(e["id"] for e in new)
                _print_events(list(reversed(new)), as_json=as_json)
    except KeyboardInterrupt:
        return


def _who(e: dict[str, Any]) -> str:
    return (e["user"] or "dinp") + (f" ({e['source']})" if e.get("source") else "")


def _events_table(rows: list[dict[str, Any]]) -> None:
    table(None, ["WHEN", "APP", "WHO", "WHAT"], [
        (time.strftime("%m-%d %H:%M:%S", time.localtime(e["at"])), e["app"] or e["node"],
         _who(e), e["message"]) for e in rows])


def _print_events(rows: list[dict[str, Any]], *, as_json: bool) -> None:
    """Events one per line as they come (a table cannot grow)."""
    for e in rows:
        if as_json:
            sys.stdout.write(json.dumps(e, sort_keys=True) + "\n")
        else:
            console.print(f"{time.strftime('%m-%d %H:%M:%S', time.localtime(e['at']))}  "
                          f"{e['app'] or e['node'] or '-'}  {_who(e)}  {escape(e['message'])}",
                          highlight=False)
    sys.stdout.flush()


def register(cli: typer.Typer) -> None:
    cli.add_typer(users_cli, name="user")
    cli.add_typer(teams_cli, name="team")
    cli.add_typer(tokens_cli, name="token")
    cli.command("events")(events)
