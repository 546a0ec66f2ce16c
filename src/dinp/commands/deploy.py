"""`dinp deploy PATH --app NAME`: build, push and deploy in one step, for a CI pipeline.

The image is built from PATH as `dinp build` would (locally or with `--remote`), pushed,
and deployed by its digest (so what runs is exactly what was built), then rolled out like
`dinp app deploy`.
"""

from __future__ import annotations

import time
from pathlib import Path

import typer

from dinp.commands.app import TimeoutOpt, WaitOpt, _report
from dinp.commands.build import (
    ConfigOpt,
    QuietOpt,
    RegistryOpt,
    _app,
    _app_type,
    _version,
    build_image,
)
from dinp.commands.common import JsonOpt, ServerOpt, TokenOpt, client
from dinp.errors import BuildFailed


def deploy(
    path: Path = typer.Argument(..., help="A .tar.gz/.tgz/.tar, a .war, or a directory.",
                                show_default=False),
    app: str = typer.Option(..., "--app", "-a", callback=_app,
                            help="The app to deploy to (it must exist)."),
    version: str | None = typer.Option(
        None, "--version", "-V", help="The image tag (default: the time, YYYYmmdd-HHMMSS)."),
    app_type: str | None = typer.Option(None, "--type", "-t", callback=_app_type,
                                        help="The app's type (default: detected)."),
    cmd: str | None = typer.Option(None, "--cmd", help="What starts the app."),
    registry: str | None = RegistryOpt,
    remote: str | None = typer.Option(
        None, "--remote", envvar="DINP_BUILD_REMOTE", show_envvar=True,
        help="Build on the `dinp build serve` at this URL instead of the local engine."),
    wait: bool = WaitOpt,
    timeout: float = TimeoutOpt,
    as_json: bool = JsonOpt,
    quiet: bool = QuietOpt,
    config: Path | None = ConfigOpt,
    server: str | None = ServerOpt,
    token: str | None = TokenOpt,
) -> None:
    """Build PATH, push it and deploy it to app NAME (a new release, rolled out)."""
    api = client(server, token)
    api.get(f"/apps/{app}")  # a missing app or a wrong token fails before any build
    version = _version(version or time.strftime("%Y%m%d-%H%M%S"))
    result = build_image(path, app=app, version=version, app_type=app_type, cmd=cmd,
                         registry=registry, push=True, remote=remote, quiet=quiet,
                         config=config)
    if not result.get("pushed"):
        raise BuildFailed(f"{result['image']} was built but not pushed: agents could not "
                          "pull it", hint="Check registry and push in [build].")
    shown = api.post(f"/apps/{app}/deploy", {"image": result["reference"]})
    _report(api, shown, wait=wait, timeout=timeout, as_json=as_json,
            message=f"{app}: release {shown['release']} of {result['image']} "
            + ("serves at {url}" if wait else "rolling out → {url}"))
