"""`dinp build`: an app's built artifact becomes `<registry>/<app>:<version>` in the registry.

build() is the whole job, for the CLI and for a build service alike: it takes a path (an
uploaded archive is just a path), reports the build log line by line to `log` and each
phase to `progress`, and returns a BuildResult or raises a DinpError. In order:

1. check the app name, version, registry, type and command (InvalidInput, exit 2);
2. reach the engine and, when pushing, the registry (Unavailable, exit 6);
3. unpack the archive safely into the build's own temporary directory (see archive.py);
4. decide the type and start command (types.py) and fill the type's Dockerfile
   template; a `dockerfile` app's own Dockerfile is used as is;
5. build with the engine's legacy builder, untagged: a failed build leaves no tag;
6. tag `<registry>/<app>:<version>` and push; if the push fails the tag is removed again.

The temporary directory is removed whatever happens. The image carries labels naming
the app, the version, the archive's sha256, the type and the build time.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dinp import validation
from dinp.build import archive, dockerfiles, types
from dinp.build.engine import Engine, check_registry, no_log, registry_reachable
from dinp.config import BuildConfig
from dinp.errors import BuildFailed, ConfigError, InvalidInput

LABEL_APP = "io.dinp.build.app"
LABEL_VERSION = "io.dinp.build.version"
LABEL_SHA256 = "io.dinp.build.sha256"
LABEL_TYPE = "io.dinp.build.type"
LABEL_TIME = "io.dinp.build.time"

# A Docker tag, less the tags dinp or Docker give a meaning to.
_VERSION = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")

Callback = Callable[[str], None]


@dataclass(frozen=True, kw_only=True)
class BuildResult:
    image: str  # <registry>/<app>:<version>
    digest: str | None  # sha256:… in the registry; None when not pushed
    id: str  # the engine's image id
    type: str
    sha256: str  # of the archive
    size: int  # bytes, as the engine counts them
    pushed: bool
    seconds: float
    timings: dict[str, float] = field(default_factory=dict)  # by phase

    @property
    def reference(self) -> str:
        """The immutable reference to deploy: `<registry>/<app>@sha256:…` once pushed."""
        if not self.digest:
            return self.image
        return f"{self.image.rpartition(':')[0]}@{self.digest}"

    def to_json(self) -> dict[str, Any]:
        return {"image": self.image, "digest": self.digest, "reference": self.reference,
                "id": self.id, "type": self.type, "sha256": self.sha256, "size": self.size,
                "pushed": self.pushed, "seconds": round(self.seconds, 3),
                "timings": {k: round(v, 3) for k, v in self.timings.items()}}


def check_app(value: str) -> str:
    try:
        return validation.app_name(value)
    except InvalidInput as exc:
        raise InvalidInput("app", exc.message.split(": ", 1)[-1]) from None


def check_version(value: str) -> str:
    """A version is a Docker tag: letters, digits, `_`, `.`, `-`, not starting with . or -."""
    if not value or not _VERSION.fullmatch(value):
        raise InvalidInput(
            "version", f"{value!r} is not a valid version: use up to 128 letters, digits, "
            "'_', '.' and '-', not starting with '.' or '-' (e.g. 1.4.2)",
        )
    if value == "latest":
        raise InvalidInput("version", "'latest' is not a version: give one that names this "
                           "build (e.g. 1.4.2 or a commit id)")
    return value


def build(
    source: Path,
    *,
    app: str,
    version: str,
    config: BuildConfig,
    app_type: str | None = None,
    cmd: str | None = None,
    push: bool | None = None,
    log: Callback = no_log,
    progress: Callback = no_log,
    engine: Engine | None = None,
) -> BuildResult:
    """Build `source` (a .tar.gz/.tgz/.tar, a .war or a directory) into
    `<registry>/<app>:<version>`, push it unless `push` is false, and say what was made."""
    started = time.monotonic()
    app = check_app(app)
    version = check_version(version)
    registry = check_registry(config.registry)
    if app_type is not None and app_type not in types.TYPES:
        raise InvalidInput("type", f"{app_type!r} is not one of {', '.join(types.TYPES)}")
    if cmd is not None:
        cmd = types.check_command(cmd)
    archive.check_source(source)
    push = config.push if push is None else push
    ref = f"{registry}/{app}:{version}"
    timings: dict[str, float] = {}

    with contextlib.ExitStack() as stack:
        if engine is None:
            engine = stack.enter_context(Engine(config.docker_host))
        if push:
            registry_reachable(registry)
        try:
            tmp = Path(tempfile.mkdtemp(prefix="dinp-build-", dir=config.tmp_dir or None))
        except OSError as exc:
            raise ConfigError(f"tmp_dir {config.tmp_dir or tempfile.gettempdir()}: "
                              f"{exc.strerror}") from exc
        stack.callback(shutil.rmtree, tmp, ignore_errors=True)

        with _timed(timings, "unpack"):
            progress(f"unpacking {source.name}")
            limits = archive.Limits(max_bytes=config.max_unpacked_mb << 20,
                                    max_files=config.max_files)
            unpacked = archive.unpack(source, tmp / "src", limits)
            root = unpacked.root
            if app_type is None and unpacked.kind == "war":
                app_type = "war"
            plan = types.plan(root, app_type=app_type, cmd=cmd)
            if plan.type == "war" and not (root / "WEB-INF").is_dir():
                wars = types.war_files(root)
                if len(wars) == 1:
                    archive.unpack_war(wars[0], tmp / "war", limits)
                    root = tmp / "war"
            log(f"{plan.type} app, {unpacked.files} entries, {unpacked.bytes} bytes, "
                f"sha256 {unpacked.sha256[:12]}…")
            if plan.type == "dockerfile" and cmd is not None:
                log("note: --cmd does not apply to a dockerfile app; its own CMD starts it")

        labels = {LABEL_APP: app, LABEL_VERSION: version, LABEL_SHA256: unpacked.sha256,
                  LABEL_TYPE: plan.type,
                  LABEL_TIME: datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}
        with _timed(timings, "context"):
            context_dir, buildargs = _context(plan, root, tmp, config, labels, log)
            context_tar = tmp / "context.tar"
            _tar(context_dir, context_tar)

        if plan.type != "dockerfile":
            base = config.base_image(plan.type)
            if engine.image(base) is None:
                with _timed(timings, "base"):
                    progress(f"pulling the base image {base}")
                    try:
                        engine.pull(base, log)
                    except BuildFailed as exc:
                        raise BuildFailed(
                            f"the base image {base} is not on this engine and cannot be "
                            f"pulled: {exc.message}",
                            hint="Run `dinp build base-images`, or set base_"
                            f"{plan.type} in [build] of dinp.toml.",
                        ) from exc

        with _timed(timings, "build"):
            progress(f"building {ref} ({plan.type})")
            with context_tar.open("rb") as ctx:
                image_id = engine.build(ctx, labels={}, log=log, buildargs=buildargs)

        engine.tag(image_id, ref)
        digest = None
        if push:
            with _timed(timings, "push"):
                progress(f"pushing {ref}")
                try:
                    digest = engine.push(ref, log)
                except BaseException:
                    engine.untag(ref)  # no release tag for an image the registry lacks
                    raise
        info = engine.image(image_id) or {}

    return BuildResult(image=ref, digest=digest, id=image_id, type=plan.type,
                       sha256=unpacked.sha256, size=int(info.get("Size") or 0),
                       pushed=push, seconds=time.monotonic() - started, timings=timings)


def _context(plan: types.Plan, root: Path, tmp: Path, config: BuildConfig,
             labels: dict[str, str], log: Callback) -> tuple[Path, dict[str, str]]:
    """The build context directory: the app's own for a dockerfile app; otherwise the
    filled template as Dockerfile beside the app in app/."""
    # The labels go in as one LABEL step at the end, rather than through the engine's
    # `labels` parameter, which adds a step (a container) per label.
    label_line = b"\nLABEL " + " ".join(
        f"{k}={json.dumps(v)}" for k, v in sorted(labels.items())).encode() + b"\n"
    if plan.type == "dockerfile":
        dockerfile = root / "Dockerfile"
        own = dockerfile.read_bytes()
        dockerfile.unlink()  # never write through a link, even one that stays inside
        dockerfile.write_bytes(own.rstrip(b"\n") + label_line)
        return root, {}
    assert plan.command is not None
    context = tmp / "context"
    context.mkdir(mode=0o700)
    root.rename(context / "app")
    text = dockerfiles.render(dockerfiles.read(f"app/{plan.template}"),
                              base=config.base_image(plan.type),
                              cmd=types.cmd_instruction(plan.command))
    (context / "Dockerfile").write_bytes(text.rstrip("\n").encode() + label_line)
    log(f"start command: {plan.command}")
    buildargs: dict[str, str] = {}
    if plan.template == "python-pip.Dockerfile":
        ca = b""
        if config.pip_ca_bundle:
            try:
                ca = Path(config.pip_ca_bundle).read_bytes()
            except OSError as exc:
                raise InvalidInput("pip_ca_bundle", f"cannot read {config.pip_ca_bundle}: "
                                   f"{exc.strerror}") from exc
        (context / "dinp-ca.pem").write_bytes(ca)
        if config.pip_index_url:
            buildargs["PIP_INDEX_URL"] = config.pip_index_url
    return context, buildargs


def _tar(directory: Path, dest: Path) -> None:
    """An uncompressed tar of `directory`'s contents for the engine, owned by root."""
    def owned_by_root(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        return info

    with tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as tar:
        for child in sorted(directory.iterdir()):
            tar.add(child, arcname=child.name, recursive=True, filter=owned_by_root)


@contextlib.contextmanager
def _timed(timings: dict[str, float], name: str) -> Iterator[None]:
    start = time.monotonic()
    try:
        yield
    finally:
        timings[name] = timings.get(name, 0.0) + time.monotonic() - start
