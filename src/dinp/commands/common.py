"""Options and helpers every CLI verb shares."""

from __future__ import annotations

import typer

from dinp.client import Client

JsonOpt = typer.Option(False, "--json", help="Print JSON for scripts instead of a table.")
ServerOpt = typer.Option(None, "--server", envvar="DINP_SERVER", show_envvar=True,
                         help="The dinp server's URL.")
TokenOpt = typer.Option(None, "--token", envvar="DINP_TOKEN", show_envvar=True,
                        help="API token.", show_default=False)


def client(server: str | None, token: str | None) -> Client:
    return Client.from_env(server, token)
