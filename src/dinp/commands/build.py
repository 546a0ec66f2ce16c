"""`dinp build PATH …`, `dinp build serve` and `dinp build base-images`: thin adapters over
the dinp.build package that show progress and the build log with rich."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.markup import escape
from rich.status import Status
from typer.core import TyperCommand, TyperGroup

from dinp import config as cfg
from dinp.build.types import BASE_TYPES, TYPES
from dinp.client import load_credentials
from dinp.errors import InvalidInput
from dinp.output import err_console, print_json, table

if TYPE_CHECKING:
    from dinp.build.engine import Log

# The builder and the Docker SDK are imported by the verbs that build, not by every `dinp`
# command: the CLI starts in a third of the time without them.

DEFAULT = "path"


class _PathOrSubcommand(TyperGroup):
    """`dinp build base-images` runs that subcommand; anything else (`dinp build PATH …`,
    `dinp build --help`) goes to the hidden default command that builds PATH."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands:
            args = [DEFAULT, *args]
        return super().parse_args(ctx, args)

    def resolve_command(self, ctx: Any, args: list[str]) -> tuple[str | None, Any, list[str]]:
        name, command, rest = super().resolve_command(ctx, args)
        # Usage and errors then read `dinp build PATH`, not `dinp build path PATH`.
        return ("" if name == DEFAULT else name), command, rest


class _PathContext(typer.Context):
    @property
    def command_path(self) -> str:
        return super().command_path.rstrip()


class _PathCommand(TyperCommand):
    context_class = _PathContext


cli = typer.Typer(cls=_PathOrSubcommand, no_args_is_help=True,
                  help="Build an app's image: `dinp build PATH --app NAME --version V`.")

ConfigOpt = typer.Option(None, "--config", "-c", envvar="DINP_CONFIG",
                         help="dinp.toml to read (default ./dinp.toml, /etc/dinp/dinp.toml).")
RegistryOpt = typer.Option(None, "--registry", "-r", help="Registry host[:port] to tag and "
                           "push to (registry in \\[build], DINP_REGISTRY; default "
                           "127.0.0.1:5000).")
PushOpt = typer.Option(None, "--push/--no-push", help="Push to the registry (default: push "
                       "in \\[build], true).", show_default=False)
QuietOpt = typer.Option(False, "--quiet", "-q", help="No progress or build log (for CI); "
                        "a failure still shows the failing step's output.")
JsonOpt = typer.Option(False, "--json", help="Print the result as JSON for scripts.")


def _version(value: str) -> str:
    from dinp.build import builder

    try:
        return builder.check_version(value)
    except InvalidInput as exc:
        raise typer.BadParameter(exc.reason) from None


def _app(value: str) -> str:
    from dinp.build import builder

    try:
        return builder.check_app(value)
    except InvalidInput as exc:
        raise typer.BadParameter(exc.reason) from None


def _registry(value: str | None) -> str | None:
    from dinp.build.engine import check_registry

    try:
        return None if value is None else check_registry(value)
    except InvalidInput as exc:
        raise typer.BadParameter(exc.reason) from None


def _app_type(value: str | None) -> str | None:
    if value is not None and value not in TYPES:
        raise typer.BadParameter(f"{value!r} is not one of {', '.join(TYPES)}")
    return value


def _base_types(values: list[str]) -> list[str]:
    for value in values:
        if value not in BASE_TYPES:
            raise typer.BadParameter(f"{value!r} is not one of {', '.join(BASE_TYPES)}")
    return values


def _load(config: Path | None, **flags: Any) -> cfg.BuildConfig:
    path = cfg.find_config_file(str(config) if config else None)
    return cfg.load(cfg.BuildConfig, "build", path=path, flags=flags)


@contextlib.contextmanager
def _display(quiet: bool, first: str) -> Iterator[tuple[Log, Log]]:
    """(log, progress) callbacks: build log lines dimmed on stderr, phases as a spinner
    and a bold line; both silent with --quiet."""
    from dinp.build.engine import no_log

    if quiet:
        yield no_log, no_log
        return
    with Status(first, console=err_console) as status:
        def log(line: str) -> None:
            err_console.print(line, style="dim", markup=False, highlight=False,
                              soft_wrap=True)

        def progress(text: str) -> None:
            status.update(text)
            err_console.print(f"[bold]==>[/] {escape(text)}", highlight=False,
                              soft_wrap=True)

        yield log, progress


def build_image(path: Path, *, app: str, version: str, app_type: str | None,
                cmd: str | None, registry: str | None, push: bool | None,
                remote: str | None, quiet: bool, config: Path | None) -> dict[str, Any]:
    """Build PATH locally or on a build service, showing progress; the BuildResult JSON
    (`dinp build` prints it, `dinp deploy` deploys its `reference`)."""
    from dinp.build import builder
    from dinp.build.remote import remote_build

    conf = _load(config, registry=_registry(registry), push=push)
    with _display(quiet, f"building {app}:{version}") as (log, progress):
        if remote:
            # The service's own [build] config decides the registry and base images.
            # The service's own token if this machine has it, else the user's API token
            # (a service that knows the server takes a token that may deploy the app).
            token = conf.build_token or os.environ.get("DINP_TOKEN") or \
                load_credentials().get("token", "")
            return remote_build(remote, token, path, app=app, version=version,
                                app_type=app_type, cmd=cmd, push=push, log=log,
                                progress=progress)
        return builder.build(path, app=app, version=version, config=conf,
                             app_type=app_type, cmd=cmd, log=log,
                             progress=progress).to_json()


@cli.command(DEFAULT, hidden=True, cls=_PathCommand)
def build(
    path: Path = typer.Argument(..., help="A .tar.gz/.tgz/.tar, a .war, or a directory.",
                                show_default=False),
    app: str = typer.Option(..., "--app", "-a", callback=_app, help="The app's name."),
    version: str = typer.Option(..., "--version", "-V", callback=_version,
                                help="The image tag, e.g. 1.4.2 or a commit id."),
    app_type: str | None = typer.Option(
        None, "--type", "-t", callback=_app_type,
        help=f"The app's type, one of {', '.join(TYPES)} (default: detected from its "
        "contents)."),
    cmd: str | None = typer.Option(None, "--cmd", help="What starts the app (default: the "
                                   "Procfile's web: line, else the type's default)."),
    registry: str | None = RegistryOpt,
    push: bool | None = PushOpt,
    remote: str | None = typer.Option(
        None, "--remote", envvar="DINP_BUILD_REMOTE", show_envvar=True,
        help="Build on the `dinp build serve` at this URL (sends build_token / "
        "DINP_BUILD_TOKEN) instead of the local engine."),
    as_json: bool = JsonOpt,
    quiet: bool = QuietOpt,
    config: Path | None = ConfigOpt,
) -> None:
    """Build PATH into <registry>/<app>:<version> and push it.

    Types: war, binary, python, node, php, static, dockerfile (see docs/building.md).
    `dinp build base-images` makes the base images every type starts from.
    """
    result = build_image(path, app=app, version=version, app_type=app_type, cmd=cmd,
                         registry=registry, push=push, remote=remote, quiet=quiet,
                         config=config)
    if as_json:
        print_json(result)
    elif quiet:
        sys.stdout.write(result["reference"] + "\n")
    else:
        image = result["image"]
        what = f"pushed {image}" if result["pushed"] else f"built {image} (not pushed)"
        err_console.print(f"[green]✓[/] {escape(what)}: {result['type']}, "
                          f"{result['size'] / 1e6:.1f} MB, {result['seconds']:.1f} s",
                          highlight=False, soft_wrap=True)
        sys.stdout.write(result["reference"] + "\n")


@cli.command("serve")
def serve(
    listen: str | None = typer.Option(None, "--listen", help="host:port (serve_listen in "
                                      "\\[build]; default 127.0.0.1:7071)."),
    registry: str | None = RegistryOpt,
    config: Path | None = ConfigOpt,
) -> None:
    """Run a build service: `dinp build PATH --remote URL` uploads to it and gets the
    same result as a local build. Needs build_token (DINP_BUILD_TOKEN) and an engine."""
    from dinp import lifecycle
    from dinp.build import service

    conf = _load(config, registry=_registry(registry), serve_listen=listen)
    lifecycle.run(lambda: service.serve(conf))


@cli.command("base-images")
def base_images(
    types: list[str] = typer.Option(
        [], "--type", "-t", callback=_base_types,
        help=f"Only this type's base image, one of {', '.join(BASE_TYPES)} (repeatable; "
        "default: all)."),
    registry: str | None = RegistryOpt,
    push: bool | None = PushOpt,
    force: bool = typer.Option(False, "--force", help="Rebuild even the current ones (with "
                               "--type: those types, not the Debian root)."),
    as_json: bool = JsonOpt,
    quiet: bool = QuietOpt,
    config: Path | None = ConfigOpt,
) -> None:
    """Make the base image of every type from Debian packages (no registry needed to pull
    from), tag them <registry>/dinp/<type>:<suite> and push them. Quick when they exist."""
    from dinp.build.base_images import ensure as ensure_base_images

    conf = _load(config, registry=_registry(registry), push=push)
    with _display(quiet, "checking base images") as (log, progress):
        outcomes = ensure_base_images(conf, types=types or None, force=force, log=log,
                                      progress=progress)
    if as_json:
        print_json([{"type": o.type, "image": o.ref, "action": o.action, "pushed": o.pushed,
                     "seconds": round(o.seconds, 3), "note": o.note} for o in outcomes])
    elif not quiet:
        table(None, ["TYPE", "IMAGE", "ACTION", "PUSHED", "TIME"], [
            (o.type, o.ref, o.action + (f" ({o.note})" if o.note else ""),
             "yes" if o.pushed else "no", f"{o.seconds:.1f}s") for o in outcomes
        ])
