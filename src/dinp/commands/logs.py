"""`dinp app logs`: the lines of every instance of an app on every node, merged in time
order; with -f, new ones as they come (new instances too) until Ctrl-C."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import urllib.parse
from typing import Any

import typer

from dinp import logs
from dinp.commands.app import cli as app_cli
from dinp.commands.common import ServerOpt, TokenOpt, client
from dinp.errors import InvalidInput


@app_cli.command("logs")
def app_logs(
    name: str = typer.Argument(..., help="App name."),
    follow: bool = typer.Option(False, "--follow", "-f",
                                help="Then print new lines as they come, from new "
                                "instances too, until Ctrl-C."),
    instance: str | None = typer.Option(None, "--instance", help="Only this instance."),
    since: str | None = typer.Option(None, "--since",
                                     help="Only lines since then: 30s, 10m, 2h, 1d, or an "
                                     "ISO time (local unless it says its zone)."),
    tail: int | None = typer.Option(None, "--tail", "-n", min=0, max=logs.MAX_TAIL,
                                    help=f"The last N lines of each container "
                                    f"(default {logs.DEFAULT_TAIL}; "
                                    f"{logs.DEFAULT_FOLLOW_TAIL} with -f; "
                                    f"{logs.MAX_TAIL} with --since).", show_default=False),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line: at, "
                                 "instance, node, release, stream, line (gone: its "
                                 "container was removed); warnings and markers too."),
    server: str | None = ServerOpt,
    token: str | None = TokenOpt,
) -> None:
    """Print the lines of every instance of an app on every node, merged in time order:
    each with its instance, node and stream (dinp: how a container ended), those of
    containers removed lately (a crash, a rollout) marked (gone)."""
    try:
        start = logs.parse_since(since) if since else None
    except InvalidInput as exc:
        raise typer.BadParameter(exc.reason, param_hint="--since") from None
    if instance is not None and not logs.INSTANCE_ID.fullmatch(instance):
        raise typer.BadParameter("not an instance id", param_hint="--instance")
    if tail is None:
        tail = (logs.MAX_TAIL if since else logs.DEFAULT_FOLLOW_TAIL if follow
                else logs.DEFAULT_TAIL)
    params = {"tail": str(tail), "follow": "true" if follow else "false"}
    if start is not None:
        params["since"] = repr(start)
    if instance:
        params["instance"] = instance
    api = client(server, token)
    if follow:  # Ctrl-C ends it, even where the shell started it with SIGINT ignored
        signal.signal(signal.SIGINT, signal.default_int_handler)
    # A follow is silent when the app is; the server says it is alive every 10 s.
    stream = api.stream(f"/apps/{name}/logs?{urllib.parse.urlencode(params)}",
                        timeout=60.0 if follow else 120.0)
    try:
        for obj in stream:
            _print(obj, as_json=as_json)
            if follow:
                sys.stdout.flush()
        sys.stdout.flush()
    except KeyboardInterrupt:  # how a follow ends: quietly, exit 0
        return
    except BrokenPipeError:  # `dinp app logs web | head`
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return


def _print(obj: Any, *, as_json: bool) -> None:
    if not isinstance(obj, dict) or "tick" in obj:
        return
    if as_json:
        sys.stdout.write(json.dumps(obj, ensure_ascii=False, sort_keys=True) + "\n")
    elif "warning" in obj:
        sys.stdout.flush()
        sys.stderr.write(f"warning: {obj['warning']}\n")
        sys.stderr.flush()
    elif "line" in obj or "dropped" in obj:
        sys.stdout.write(logs.text(obj) + "\n")
