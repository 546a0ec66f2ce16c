"""`dinp login`, `dinp logout`, `dinp whoami`: which server, and who you are on it."""

from __future__ import annotations

import sys

import typer

from dinp.client import Client, forget_token, load_credentials, save_credentials
from dinp.commands.common import JsonOpt, ServerOpt, TokenOpt, client
from dinp.errors import InvalidInput
from dinp.output import console, print_json


def login(
    server: str | None = typer.Argument(None, help="The dinp server's URL, e.g. "
                                        "http://dinp:7070 (default: the one you used last)."),
    token: str | None = typer.Option(None, "--token", envvar="DINP_TOKEN",
                                     help="Sign in with an API token."),
    user: str | None = typer.Option(None, "--user", "-u",
                                    help="Sign in with a user name and password instead."),
    password_stdin: bool = typer.Option(False, "--password-stdin",
                                        help="Read the password from standard input."),
) -> None:
    """Sign in: check who you are on the server and remember it.

    The server and token are kept for later commands in a file only you can read. With
    --user, the server gives a session token that lasts session_ttl."""
    url = (server or load_credentials().get("server") or "").rstrip("/")
    if not url:
        raise InvalidInput("server", "say which server, e.g. `dinp login http://dinp:7070`")
    if user is not None:
        password = (sys.stdin.readline().rstrip("\n") if password_stdin
                    else typer.prompt("Password", hide_input=True))
        reply = Client(server=url, token="").post("/login", {"user": user,
                                                             "password": password})
        token = reply["token"]
    elif token is None:
        token = typer.prompt("API token", hide_input=True)
    api = Client(server=url, token=token)
    me = api.get("/whoami")  # fails with a clear message on a bad URL or token
    path = save_credentials(api.server, token)
    scope = f" (this token: app {me['app']} only)" if me.get("app") else ""
    console.print(f"logged in to {api.server} as {me['user']}, {me['role']}{scope} "
                  f"(saved in {path})")


def logout(server: str | None = ServerOpt, token: str | None = TokenOpt) -> None:
    """Sign out: forget the saved token.

    A session token (from `login --user`) is revoked on the server too."""
    api = client(server, token)
    if api.token:
        api.post("/logout", {})
    path = forget_token()
    console.print(f"logged out of {api.server}" + (f" (removed from {path})" if path else ""))


def whoami(as_json: bool = JsonOpt, server: str | None = ServerOpt,
           token: str | None = TokenOpt) -> None:
    """Who your token acts as: user, role, teams (and the app a CI token is for)."""
    api = client(server, token)
    me = api.get("/whoami")
    if as_json:
        print_json({**me, "server": api.server})
        return
    teams = ", ".join(me["teams"]) or "no team"
    scope = f"; this token: app {me['app']} only" if me.get("app") else ""
    console.print(f"{me['user']} ({me['role']}) on {api.server}: {teams}{scope}")


def register(cli: typer.Typer) -> None:
    cli.command("login")(login)
    cli.command("logout")(logout)
    cli.command("whoami")(whoami)
