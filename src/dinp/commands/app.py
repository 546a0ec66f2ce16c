"""`dinp app …`: the user verbs on apps."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from typing import Any

import typer
from rich.markup import escape
from rich.status import Status

from dinp import validation
from dinp.client import Client
from dinp.commands.common import JsonOpt, ServerOpt, TokenOpt, client
from dinp.commands.domain_table import https_settings, print_domains
from dinp.const import DEFAULT_APP_PORT
from dinp.errors import DeployFailed, InvalidInput, Timeout
from dinp.output import console, duration, err_console, print_json, short_image, table

cli = typer.Typer(no_args_is_help=True)

WaitOpt = typer.Option(False, "--wait", help="Return only when every instance serves "
                       "through the router.")
TimeoutOpt = typer.Option(120.0, "--timeout", help="Seconds --wait may take.")


def _memory(value: str) -> int:
    """Any size a person may type (`1.5g`, `512MiB`), sent to the API in megabytes."""
    try:
        return validation.memory_mb(value)
    except InvalidInput as exc:
        raise typer.BadParameter(exc.reason) from None


def _name(value: str) -> str:
    try:
        return validation.app_name(value)
    except InvalidInput as exc:
        raise typer.BadParameter(exc.reason) from None


@cli.command("create")
def create(
    name: str = typer.Argument(..., callback=_name, help="App name: a lowercase DNS label."),
    image: str = typer.Option(..., "--image", help="Image reference, e.g. reg:5000/app:1."),
    instances: int = typer.Option(1, "--instances", "-i", min=0,
                                  max=validation.MAX_INSTANCES),
    memory: str = typer.Option("256m", "--memory", "-m", callback=_memory,
                               help="Memory per instance, e.g. 256m or 1g."),
    port: int = typer.Option(DEFAULT_APP_PORT, "--port", min=1, max=65535,
                             help="Port the app listens on (given to it as $PORT)."),
    env: list[str] = typer.Option([], "--env", "-e", help="KEY=VALUE, repeatable."),
    health_path: str | None = typer.Option(None, "--health-path",
                                           help="HTTP path checked for health "
                                           "(default: a TCP connect)."),
    surge: int = typer.Option(0, "--surge", min=0, max=validation.MAX_INSTANCES,
                              help="New instances a rollout starts at once "
                              "(0: a quarter of the instances)."),
    deploy_timeout: float = typer.Option(120.0, "--deploy-timeout", min=1,
                                         max=validation.MAX_DEPLOY_TIMEOUT,
                                         help="Seconds a release may take to come up "
                                         "before its rollout is halted."),
    stop_grace: float = typer.Option(10.0, "--stop-grace", min=0,
                                     max=validation.MAX_STOP_GRACE,
                                     help="Seconds an instance that leaves has between "
                                     "SIGTERM and SIGKILL to finish its requests."),
    team: str | None = typer.Option(None, "--team", help="The team it belongs to "
                                    "(default: your only team)."),
    wait: bool = WaitOpt,
    timeout: float = TimeoutOpt,
    as_json: bool = JsonOpt,
    server: str | None = ServerOpt,
    token: str | None = TokenOpt,
) -> None:
    """Create an app and run INSTANCES of IMAGE."""
    api = client(server, token)
    body = {"name": name, "image": image, "instances": instances, "memory": memory,
            "port": port, "env": validation.env_pairs(env), "health_path": health_path,
            "surge": surge, "deploy_timeout": deploy_timeout, "stop_grace": stop_grace}
    if team is not None:
        body["team"] = team
    app = api.post("/apps", body)
    _report(api, app, wait=wait, timeout=timeout, as_json=as_json,
            message=f"created [bold]{name}[/]: {instances} x {image} → {{url}}")


@cli.command("list")
def list_apps(as_json: bool = JsonOpt, server: str | None = ServerOpt,
              token: str | None = TokenOpt) -> None:
    """List apps with their instance counts."""
    apps = client(server, token).get("/apps")
    if as_json:
        print_json(apps)
        return
    table(None, ["APP", "HEALTHY", "ROUTED", "MEMORY", "IMAGE", "URL"], [
        (a["name"], f"{a['status']['healthy']}/{a['instances']}", a["status"]["routed"],
         f"{a['memory_mb']}m", short_image(a["image"]), a["url"]) for a in apps
    ], keep=("APP", "IMAGE", "URL"), optional=("MEMORY", "ROUTED", "IMAGE"))


@cli.command("show")
def show(name: str = typer.Argument(..., help="App name."), as_json: bool = JsonOpt,
         server: str | None = ServerOpt, token: str | None = TokenOpt) -> None:
    """Show an app and each of its instances (node, address, state, health), its HTTPS
    settings and its custom domains with their certificates."""
    app = client(server, token).get(f"/apps/{name}")
    if as_json:
        print_json(app)
        return
    s = app["status"]
    console.print(f"[bold]{app['name']}[/] (team {app.get('team') or '-'})  "
                  f"{escape(app['state'])}")
    console.print(f"{app['url']}\n"
                  f"image {app['image']}  release {app['release']}  memory {app['memory_mb']}m"
                  f"  port {app['port']}  health {app['health_path'] or 'tcp'}\n"
                  f"instances: {app['instances']} wanted, {s['placed']} placed, "
                  f"{s['healthy']} healthy, {s['routed']} routed\n"
                  f"rollouts: surge {app['surge'] or 'a quarter'}, deploy timeout "
                  f"{app['deploy_timeout']:g} s, stop grace {app['stop_grace']:g} s")
    table(None, ["INSTANCE", "NODE", "ADDRESS", "STATE", "REL", "UP", "RESTARTS", "MEM"], [
        (i["id"], i["node"] + ("" if i["node_status"] == "ready" else f" ({i['node_status']})"),
         i["address"], _instance_state(i), i["release"], duration(i.get("uptime_s")),
         i.get("restarts", 0), f"{i['memory_mb']}m" if i.get("memory_mb") is not None
         else None)
        for i in app["instance_list"]
    ], keep=("INSTANCE", "ADDRESS"), optional=("MEM", "RESTARTS", "UP"))
    for i in app["instance_list"]:
        if i.get("error"):
            what = "keeps crashing" if i.get("crash_looping") else "failed"
            console.print(f"[red]{i['id']} {what}:[/] {escape(i['error'])}")
        elif i.get("health_detail"):
            console.print(f"[yellow]{i['id']} health check:[/] {escape(i['health_detail'])}")
    if app["env"]:
        console.print("env: " + " ".join(f"{k}=…" for k in sorted(app["env"])))
    console.print(https_settings(app))
    domains = app.get("custom_domains")
    if domains:
        print_domains(domains, title="Domains")
    elif domains is None and app.get("domains"):  # the database did not answer
        console.print("domains: " + ", ".join(app["domains"]) + " (certificates unknown)")


def _instance_state(i: dict[str, Any]) -> str:
    """One word when running (its health), else the container's state and health."""
    if i["state"] == "running":
        return str(i["health"])
    return f"{i['state']}/{i['health']}" if i["health"] not in ("-", "unknown") else \
        str(i["state"])


@cli.command("scale")
def scale(
    name: str = typer.Argument(..., help="App name."),
    instances: int = typer.Argument(..., min=0, max=validation.MAX_INSTANCES,
                                    help="How many instances to run."),
    wait: bool = WaitOpt,
    timeout: float = TimeoutOpt,
    as_json: bool = JsonOpt,
    server: str | None = ServerOpt,
    token: str | None = TokenOpt,
) -> None:
    """Change how many instances of an app run."""
    api = client(server, token)
    app = api.post(f"/apps/{name}/scale", {"instances": instances})
    _report(api, app, wait=wait, timeout=timeout, as_json=as_json,
            message=f"{name}: {instances} instance(s)")


@cli.command("settings")
def settings(
    name: str = typer.Argument(..., help="App name."),
    surge: int | None = typer.Option(None, "--surge", min=0, max=validation.MAX_INSTANCES,
                                     help="New instances a rollout starts at once "
                                     "(0: a quarter of the instances)."),
    deploy_timeout: float | None = typer.Option(None, "--deploy-timeout", min=1,
                                                max=validation.MAX_DEPLOY_TIMEOUT,
                                                help="Seconds a release may take to come "
                                                "up before its rollout is halted."),
    stop_grace: float | None = typer.Option(None, "--stop-grace", min=0,
                                            max=validation.MAX_STOP_GRACE,
                                            help="Seconds between SIGTERM and SIGKILL."),
    https_redirect: bool | None = typer.Option(None, "--https-redirect/--no-https-redirect",
                                               help="Redirect plain-HTTP requests (308) to "
                                               "https, for its host and custom domains."),
    hsts: int | None = typer.Option(None, "--hsts", min=0, max=validation.MAX_HSTS,
                                    help="Seconds of Strict-Transport-Security on its HTTPS "
                                    "responses (0: no header; 31536000 is a year)."),
    as_json: bool = JsonOpt,
    server: str | None = ServerOpt,
    token: str | None = TokenOpt,
) -> None:
    """Show or change how the app is rolled out, stopped and served over HTTPS (no new
    release)."""
    api = client(server, token)
    changes = {k: v for k, v in (("surge", surge), ("deploy_timeout", deploy_timeout),
                                 ("stop_grace", stop_grace), ("https_redirect", https_redirect),
                                 ("hsts", hsts)) if v is not None}
    app = api.post(f"/apps/{name}/settings", changes) if changes else api.get(f"/apps/{name}")
    if as_json:
        print_json({k: app[k] for k in ("surge", "deploy_timeout", "stop_grace",
                                        "https_redirect", "hsts")})
        return
    console.print(f"{name}: surge {app['surge']} (0: a quarter of the instances), deploy "
                  f"timeout {app['deploy_timeout']:g} s, stop grace {app['stop_grace']:g} s, "
                  f"HTTPS redirect {'on' if app['https_redirect'] else 'off'}, HSTS "
                  + (f"{app['hsts']} s" if app["hsts"] else "off"))


def _report(api: Client, app: dict[str, Any], *, wait: bool, timeout: float, as_json: bool,
            message: str) -> None:
    """After a change: wait until it serves if asked, then print the app or `message`.
    With `as_json` the app is printed whatever happens, with `outcome` saying how the
    wait ended (`serving`, `halted`, `timeout`; `requested` without a wait), so a
    pipeline reads one document either way."""
    outcome = "requested"
    try:
        if wait:
            app = wait_serving(api, app["name"], timeout=timeout, quiet=as_json)
            outcome = "serving"
    except (DeployFailed, Timeout) as exc:
        if as_json:
            print_json({**exc.app, "outcome": "halted" if isinstance(exc, DeployFailed)
                        else "timeout", "error": exc.message})
        raise
    if as_json:
        print_json({**app, "outcome": outcome})
    else:
        console.print(message.replace("{url}", app["url"]))


@cli.command("delete")
def delete(
    name: str = typer.Argument(..., help="App name."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
    server: str | None = ServerOpt,
    token: str | None = TokenOpt,
) -> None:
    """Delete an app: its instances stop and its routes go away."""
    if not yes:
        typer.confirm(f"Delete app {name} and stop all its instances?", abort=True)
    client(server, token).delete(f"/apps/{name}")
    console.print(f"deleted {name}")


def _serving(app: dict[str, Any]) -> bool:
    s = app["status"]
    want = app["instances"]
    current = [i for i in app["instance_list"] if i["release"] == app["release"]]
    return bool(s["placed"] == want and s["healthy"] == want and s["routed"] == want
                and len(current) == want)


def probe_router(app: dict[str, Any]) -> bool:
    """One request through the router, as a user would make it."""
    if app["instances"] == 0:
        return True
    router = app.get("router_url") or app["url"]
    req = urllib.request.Request(router, headers={"Host": app["host"]})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return bool(resp.status < 500)
    except urllib.error.HTTPError as exc:
        return bool(exc.code < 500 and exc.headers.get("X-Dinp-Error") is None)
    except OSError:
        return False


def _halted(app: dict[str, Any], release: int) -> None:
    """Fail when the rollout waited for was halted (the release before it serves)."""
    rollout = app.get("rollout", {})
    if rollout.get("failed_release") == release:
        raise DeployFailed(f"{app['name']}: {app['state']}",
                           hint=f"`dinp app releases {app['name']}` and `dinp app show "
                           f"{app['name']}` tell more.", app=app)


def wait_serving(api: Client, name: str, *, timeout: float, quiet: bool) -> dict[str, Any]:
    """Poll until every wanted instance is healthy, routed and answers via the router."""
    deadline = time.monotonic() + timeout
    app: dict[str, Any] = api.get(f"/apps/{name}")
    release = app["release"]  # the one to wait for: a halt goes back to an older one
    with Status("waiting for instances", console=err_console) as status:
        if quiet:
            status.stop()
        while time.monotonic() < deadline:
            app = api.get(f"/apps/{name}")
            status.update(f"{name}: {app['state']}")
            _halted(app, release)
            if _serving(app) and probe_router(app):
                return app
            time.sleep(0.1)
    states = "; ".join(
        f"{i['id']}@{i['node']}: {i['state']}/{i['health']}"
        + (f" ({i['error']})" if i.get("error") else "")
        for i in app["instance_list"]
    ) or "none placed"
    raise Timeout(f"{name} is not serving after {timeout:.0f} s ({states})",
                  hint=f"`dinp app show {name}` and the server's events tell why.", app=app)
