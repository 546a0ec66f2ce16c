"""`dinp app deploy|rollback|restart|releases|env|domains`: changing what an app runs
and where it is served.

Each change makes a new release that the server rolls out: new instances start and are
routed before old ones leave. `--wait` returns once every instance runs the new release
and serves through the router.
"""

from __future__ import annotations

import time
from typing import Any

import typer

from dinp import validation
from dinp.commands.app import TimeoutOpt, WaitOpt, _memory, _report
from dinp.commands.app import cli as app_cli
from dinp.commands.common import JsonOpt, ServerOpt, TokenOpt, client
from dinp.commands.domain_table import print_domains
from dinp.output import console, print_json, short_image, table

env_cli = typer.Typer(no_args_is_help=True, help="An app's env vars (each change is a new "
                      "release, rolled out).")
app_cli.add_typer(env_cli, name="env")


@app_cli.command("deploy")
def deploy(
    name: str = typer.Argument(..., help="App name."),
    image: str | None = typer.Option(None, "--image", help="The new image reference."),
    env: list[str] = typer.Option([], "--env", "-e", help="KEY=VALUE to set, repeatable."),
    port: int | None = typer.Option(None, "--port", min=1, max=65535,
                                    help="A new port the app listens on."),
    memory: str | None = typer.Option(None, "--memory", "-m", callback=lambda v: v and
                                      _memory(v), help="New memory per instance, e.g. 512m."),
    health_path: str | None = typer.Option(None, "--health-path",
                                           help="A new HTTP health path ('' for TCP)."),
    cancel: bool = typer.Option(False, "--cancel", help="Halt the rollout in progress "
                                "instead: the release before it serves again."),
    wait: bool = WaitOpt,
    timeout: float = TimeoutOpt,
    as_json: bool = JsonOpt,
    server: str | None = ServerOpt,
    token: str | None = TokenOpt,
) -> None:
    """Make the app's next release and roll it out: new instances first, then the old
    ones leave."""
    if cancel:
        app = client(server, token).post(f"/apps/{name}/deploy/cancel", {})
        if as_json:
            print_json(app)
        else:
            console.print(f"{name}: {app['state']}")
        return
    body: dict[str, Any] = {}
    if image is not None:
        body["image"] = validation.image(image)
    if env:
        body["env"] = validation.env_pairs(env)
    if port is not None:
        body["port"] = port
    if memory:
        body["memory"] = memory
    if health_path is not None:
        body["health_path"] = health_path or None
    _release(name, "deploy", body, wait=wait, timeout=timeout, as_json=as_json,
             server=server, token=token)


@app_cli.command("rollback")
def rollback(
    name: str = typer.Argument(..., help="App name."),
    release: int | None = typer.Argument(None, min=1, help="The release to go back to "
                                         "(default: the one before the current)."),
    wait: bool = WaitOpt,
    timeout: float = TimeoutOpt,
    as_json: bool = JsonOpt,
    server: str | None = ServerOpt,
    token: str | None = TokenOpt,
) -> None:
    """Make a new release equal to an earlier one and roll it out."""
    _release(name, "rollback", {"release": release}, wait=wait, timeout=timeout,
             as_json=as_json, server=server, token=token)


@app_cli.command("restart")
def restart(
    name: str = typer.Argument(..., help="App name."),
    wait: bool = WaitOpt,
    timeout: float = TimeoutOpt,
    as_json: bool = JsonOpt,
    server: str | None = ServerOpt,
    token: str | None = TokenOpt,
) -> None:
    """Replace every instance, a few at a time, without dropping a request."""
    _release(name, "restart", None, wait=wait, timeout=timeout, as_json=as_json,
             server=server, token=token)


@app_cli.command("releases")
def releases(name: str = typer.Argument(..., help="App name."), as_json: bool = JsonOpt,
             server: str | None = ServerOpt, token: str | None = TokenOpt) -> None:
    """The app's releases, newest first: what changed, who, when."""
    rows = client(server, token).get(f"/apps/{name}/releases")
    if as_json:
        print_json(rows)
        return
    table(None, ["RELEASE", "STATUS", "IMAGE", "CHANGE", "BY", "WHEN"], [
        (f"{r['version']}{' *' if r['current'] else ''}", r["status"], short_image(r["image"]),
         r["change"], r["created_by"] or "-", time.strftime("%Y-%m-%d %H:%M", time.localtime(
             r["created_at"]))) for r in rows
    ], keep=("IMAGE",), optional=("BY", "STATUS"))


@env_cli.command("set")
def env_set(
    name: str = typer.Argument(..., help="App name."),
    pairs: list[str] = typer.Argument(..., help="KEY=VALUE, one or more."),
    wait: bool = WaitOpt,
    timeout: float = TimeoutOpt,
    as_json: bool = JsonOpt,
    server: str | None = ServerOpt,
    token: str | None = TokenOpt,
) -> None:
    """Set env vars: a new release with them, rolled out."""
    _release(name, "env", {"set": validation.env_pairs(pairs)}, wait=wait, timeout=timeout,
             as_json=as_json, server=server, token=token)


@env_cli.command("unset")
def env_unset(
    name: str = typer.Argument(..., help="App name."),
    keys: list[str] = typer.Argument(..., help="Variable names, one or more."),
    wait: bool = WaitOpt,
    timeout: float = TimeoutOpt,
    as_json: bool = JsonOpt,
    server: str | None = ServerOpt,
    token: str | None = TokenOpt,
) -> None:
    """Unset env vars: a new release without them, rolled out."""
    _release(name, "env", {"unset": keys}, wait=wait, timeout=timeout, as_json=as_json,
             server=server, token=token)


@env_cli.command("list")
def env_list(
    name: str = typer.Argument(..., help="App name."),
    show_values: bool = typer.Option(False, "--show-values",
                                     help="Print the values too (they may be secrets)."),
    as_json: bool = JsonOpt,
    server: str | None = ServerOpt,
    token: str | None = TokenOpt,
) -> None:
    """The app's env vars; values hidden unless --show-values."""
    path = f"/apps/{name}" + ("?show_env=true" if show_values else "")
    env: dict[str, str | None] = client(server, token).get(path)["env"]
    shown = {k: (v if show_values else "…") for k, v in sorted(env.items())}
    if as_json:
        print_json(shown)
        return
    table(None, ["NAME", "VALUE"], list(shown.items()))


def _release(name: str, verb: str, body: dict[str, Any] | None, *, wait: bool,
             timeout: float, as_json: bool, server: str | None, token: str | None) -> None:
    api = client(server, token)
    app = api.post(f"/apps/{name}/{verb}", body if body is not None else {})
    _report(api, app, wait=wait, timeout=timeout, as_json=as_json,
            message=f"{name}: release {app['release']} rolling out → {{url}}"
            if not wait else f"{name}: release {app['release']} serves at {{url}}")
    if not wait and not as_json:
        console.print(f"`dinp app show {name}` follows it; --wait waits for it.")


domains_cli = typer.Typer(no_args_is_help=True, help="An app's custom domains (DNS points "
                          "them at the routers; each routes to one app).")
app_cli.add_typer(domains_cli, name="domains")


@domains_cli.command("add")
def domains_add(name: str = typer.Argument(..., help="App name."),
                domain: str = typer.Argument(..., help="e.g. www.example.com"),
                tls: bool = typer.Option(False, "--tls", help="Also serve it over HTTPS: "
                                         "the server orders its certificate by ACME "
                                         "(HTTP-01, so its DNS must point at the routers) "
                                         "and renews it. Also for a domain added before."),
                server: str | None = ServerOpt, token: str | None = TokenOpt) -> None:
    """Route a custom domain to the app (at once, through every router)."""
    added = client(server, token).post(f"/apps/{name}/domains",
                                       {"domain": domain, "tls": tls})
    console.print(f"{name}: {added['domain']} added" + (
        "; its certificate is being ordered (`dinp app domains list` shows it)"
        if tls else ""))


@domains_cli.command("remove")
def domains_remove(name: str = typer.Argument(..., help="App name."),
                   domain: str = typer.Argument(..., help="The domain to stop routing."),
                   server: str | None = ServerOpt, token: str | None = TokenOpt) -> None:
    """Stop routing a custom domain to the app (its certificate, if any, is revoked)."""
    client(server, token).delete(f"/apps/{name}/domains/{domain.lower()}")
    console.print(f"{name}: {domain.lower()} removed")


@domains_cli.command("list")
def domains_list(name: str = typer.Argument(..., help="App name."), as_json: bool = JsonOpt,
                 server: str | None = ServerOpt, token: str | None = TokenOpt) -> None:
    """The app's custom domains, with their certificates: state, expiry, the last error."""
    rows = client(server, token).get(f"/apps/{name}/domains")
    if as_json:
        print_json(rows)
        return
    print_domains(rows)
