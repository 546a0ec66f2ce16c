"""`dinp login`: remember which server to talk to and with which token."""

from __future__ import annotations

import typer

from dinp.client import Client, save_credentials
from dinp.output import console


def login(
    server: str = typer.Argument(..., help="The dinp server's URL, e.g. http://dinp:7070."),
    token: str = typer.Option(..., "--token", prompt=True, hide_input=True,
                              envvar="DINP_TOKEN", help="Your API token."),
) -> None:
    """Check the token against the server and remember both for later commands."""
    api = Client(server=server.rstrip("/"), token=token)
    api.get("/apps")  # fails with a clear message on a bad URL or token
    path = save_credentials(api.server, token)
    console.print(f"logged in to {api.server} (saved in {path})")


def register(cli: typer.Typer) -> None:
    cli.command("login")(login)
