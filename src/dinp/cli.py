"""The `dinp` executable: roles as subcommands, user verbs beside them.

Only this entry point catches DinpError: it prints the message (and hint) to stderr and
exits with the error's code; any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys

import typer

from dinp import __version__
from dinp.commands import accounts as accounts_cmd
from dinp.commands import app as app_cmd
from dinp.commands import build as build_cmd
from dinp.commands import deploy as deploy_cmd
from dinp.commands import logs as logs_cmd
from dinp.commands import node as node_cmd
from dinp.commands import releases as releases_cmd
from dinp.commands import roles as roles_cmd
from dinp.commands import session as session_cmd
from dinp.errors import DinpError
from dinp.output import error, setup_logging

cli = typer.Typer(
    name="dinp", help="dinp: a small PaaS for web applications on Docker.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
)
# `dinp app deploy|rollback|restart|releases|env` live in commands/releases.py, and
# `dinp app logs` in commands/logs.py; they join the `app` group when imported.
_ = releases_cmd, logs_cmd
cli.add_typer(app_cmd.cli, name="app", help="Create, change, inspect, scale and delete apps.")
cli.add_typer(node_cmd.cli, name="node", help="The machines that run apps.")
cli.add_typer(build_cmd.cli, name="build", help="Build an app's image: dinp build PATH "
              "--app NAME --version V (see dinp build --help); dinp build base-images.")
cli.command("deploy")(deploy_cmd.deploy)
cli.command("status")(node_cmd.status)
roles_cmd.register(cli)
session_cmd.register(cli)
accounts_cmd.register(cli)


def _version(value: bool) -> None:
    if value:
        print(f"dinp {__version__}")
        raise typer.Exit()


@cli.callback()
def root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log debug details."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Log warnings and errors only."),
    json_logs: bool = typer.Option(False, "--json-logs", help="Log JSON lines (for roles)."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    setup_logging(verbose=verbose, quiet=quiet, json_logs=json_logs)


def main() -> None:
    try:
        cli()
    except DinpError as exc:
        error(exc.message, exc.hint)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
