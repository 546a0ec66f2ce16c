"""`dinp build`: an app's built artifact becomes `<registry>/<app>:<version>` in the registry.

build() is the whole job, for the CLI and for a build service alike: it takes a path (an
uploaded archive is just a path), reports the build log line by line to `log` and each
phase to `progress`, and returns a BuildResult or raises a DinpError. Its steps, in order:

1. `_check`: the app name, version, registry, type and command (InvalidInput, exit 2);
2. reach the engine and, when pushing, the registry (Unavailable, exit 6);
3. `_Job.unpack`: unpack the archive safely into the build's own temporary directory
   (see archive.py), decide the type and start command (types.py);
4. `_Job.context`: fill the type's Dockerfile template; a `dockerfile` app's own
   Dockerfile is used as is;
5. `_Job.ensure_base`: pull the type's base image if the engine lacks it;
6. `_Job.build_image`: build with the engine's legacy builder, untagged: a failed build
   leaves no tag;
7. `_Job.publish`: tag `<registry>/<app>:<version>` and push; if the push fails the tag
   is removed again.

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
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dinp import const, validation
from dinp.build import archive, dockerfiles, types
from dinp.build.engine import Engine, Log, check_registry, no_log, registry_reachable
from dinp.config import BuildConfig
from dinp.docker_engine import parse_image
from dinp.errors import BuildFailed, ConfigError, InvalidInput

LABEL_APP = "io.dinp.build.app"
LABEL_VERSION = "io.dinp.build.version"
LABEL_SHA256 = "io.dinp.build.sha256"
LABEL_TYPE = const.LABEL_BUILD_TYPE
LABEL_TIME = "io.dinp.build.time"

# A Docker tag, less the tags dinp or Docker give a meaning to.
_VERSION = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


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
        return parse_image(self.image).at(self.digest)

    def to_json(self) -> dict[str, Any]:
        return {"image": self.image, "digest": self.digest, "reference": self.reference,
                "id": self.id, "type": self.type, "sha256": self.sha256, "size": self.size,
                "pushed": self.pushed, "seconds": round(self.seconds, 3),
                "timings": {k: round(v, 3) for k, v in self.timings.items()}}


def check_app(value: str) -> str:
    try:
        return validation.app_name(value)
    except InvalidInput as exc:
        raise InvalidInput("app", exc.reason) from None


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
    log: Log = no_log,
    progress: Log = no_log,
    engine: Engine | None = None,
) -> BuildResult:
    """Build `source` (a .tar.gz/.tgz/.tar, a .war or a directory) into
    `<registry>/<app>:<version>`, push it unless `push` is false, and say what was made."""
    started = time.monotonic()
    request = _check(source, app=app, version=version, config=config, app_type=app_type,
                     cmd=cmd, push=push)
    with contextlib.ExitStack() as stack:
        if engine is None:
            engine = stack.enter_context(Engine(config.docker_host))
        if request.push:
            registry_reachable(request.registry)
        job = _Job(config=config, engine=engine, tmp=_workdir(config, stack), log=log,
                   progress=progress)
        unpacked = job.unpack(request)
        context = job.context(unpacked, _labels(request, unpacked))
        job.ensure_base(unpacked.plan.type)
        image_id = job.build_image(request.ref, unpacked.plan.type, context)
        digest = job.publish(image_id, request.ref, push=request.push)
        info = engine.image(image_id) or {}
    return BuildResult(image=request.ref, digest=digest, id=image_id, type=unpacked.plan.type,
                       sha256=unpacked.sha256, size=int(info.get("Size") or 0),
                       pushed=request.push, seconds=time.monotonic() - started,
                       timings=job.timings)


# -- the steps -------------------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class _Request:
    """What to build, checked before anything is touched."""

    source: Path
    app: str
    version: str
    registry: str
    app_type: str | None  # None: detected
    cmd: str | None  # None: the Procfile's or the type's
    push: bool

    @property
    def ref(self) -> str:
        return f"{self.registry}/{self.app}:{self.version}"


@dataclass(frozen=True, kw_only=True)
class _Unpacked:
    """The app's files, ready to be put in a context, and how to build them."""

    root: Path
    plan: types.Plan
    sha256: str  # of the archive


@dataclass(frozen=True, kw_only=True)
class _Context:
    tar: Path  # the uncompressed tar the engine builds from
    buildargs: dict[str, str]


def _check(source: Path, *, app: str, version: str, config: BuildConfig,
           app_type: str | None, cmd: str | None, push: bool | None) -> _Request:
    """The app name, version, registry, type, command and path, checked (InvalidInput)."""
    app = check_app(app)
    version = check_version(version)
    registry = check_registry(config.registry)
    if app_type is not None and app_type not in types.TYPES:
        raise InvalidInput("type", f"{app_type!r} is not one of {', '.join(types.TYPES)}")
    if cmd is not None:
        cmd = types.check_command(cmd)
    archive.check_source(source)
    return _Request(source=source, app=app, version=version, registry=registry,
                    app_type=app_type, cmd=cmd, push=config.push if push is None else push)


def _workdir(config: BuildConfig, stack: contextlib.ExitStack) -> Path:
    """The build's own temporary directory, removed when `stack` closes."""
    try:
        tmp = Path(tempfile.mkdtemp(prefix="dinp-build-", dir=config.tmp_dir or None))
    except OSError as exc:
        raise ConfigError(f"tmp_dir {config.tmp_dir or tempfile.gettempdir()}: "
                          f"{exc.strerror}") from exc
    stack.callback(shutil.rmtree, tmp, ignore_errors=True)
    return tmp


def _labels(request: _Request, unpacked: _Unpacked) -> dict[str, str]:
    return {LABEL_APP: request.app, LABEL_VERSION: request.version,
            LABEL_SHA256: unpacked.sha256, LABEL_TYPE: unpacked.plan.type,
            LABEL_TIME: datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}


@dataclass(kw_only=True)
class _Job:
    """One build under way: its engine, its temporary directory, where it reports, and
    how long each phase took."""

    config: BuildConfig
    engine: Engine
    tmp: Path
    log: Log
    progress: Log
    timings: dict[str, float] = field(default_factory=dict)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.monotonic()
        try:
            yield
        finally:
            self.timings[name] = self.timings.get(name, 0.0) + time.monotonic() - start

    def unpack(self, request: _Request) -> _Unpacked:
        """Unpack the archive under the limits, decide the type and the start command; a
        war inside the archive is unpacked too."""
        with self.phase("unpack"):
            self.progress(f"unpacking {request.source.name}")
            limits = archive.Limits(max_bytes=self.config.max_unpacked_mb << 20,
                                    max_files=self.config.max_files)
            unpacked = archive.unpack(request.source, self.tmp / "src", limits)
            app_type = request.app_type
            if app_type is None and unpacked.kind == "war":
                app_type = "war"
            root = unpacked.root
            plan = types.plan(root, app_type=app_type, cmd=request.cmd)
            if plan.type == "war" and not (root / "WEB-INF").is_dir():
                wars = types.war_files(root)
                if len(wars) == 1:
                    archive.unpack_war(wars[0], self.tmp / "war", limits)
                    root = self.tmp / "war"
            self.log(f"{plan.type} app, {unpacked.files} entries, {unpacked.bytes} bytes, "
                     f"sha256 {unpacked.sha256[:12]}…")
            if plan.type == "dockerfile" and request.cmd is not None:
                self.log("note: --cmd does not apply to a dockerfile app; its own CMD starts it")
        return _Unpacked(root=root, plan=plan, sha256=unpacked.sha256)

    def context(self, unpacked: _Unpacked, labels: dict[str, str]) -> _Context:
        """The build context as a tar: the app's own Dockerfile, or the filled template."""
        with self.phase("context"):
            if unpacked.plan.type == "dockerfile":
                directory, buildargs = _own_dockerfile(unpacked.root, labels), {}
            else:
                directory = self.tmp / "context"
                _template_context(unpacked.plan, unpacked.root, directory, self.config,
                                  labels)
                self.log(f"start command: {unpacked.plan.command}")
                buildargs = (_pip_settings(directory, self.config)
                             if unpacked.plan.template == "python-pip.Dockerfile" else {})
            tar = self.tmp / "context.tar"
            _tar(directory, tar)
        return _Context(tar=tar, buildargs=buildargs)

    def ensure_base(self, app_type: str) -> None:
        """Pull the type's base image unless the engine has it (a dockerfile app: none)."""
        if app_type == "dockerfile":
            return
        base = self.config.base_image(app_type)
        if self.engine.image(base) is not None:
            return
        with self.phase("base"):
            self.progress(f"pulling the base image {base}")
            try:
                self.engine.pull(base, self.log)
            except BuildFailed as exc:
                raise BuildFailed(
                    f"the base image {base} is not on this engine and cannot be pulled: "
                    f"{exc.message}",
                    hint=f"Run `dinp build base-images`, or set base_{app_type} in [build] "
                    "of dinp.toml.",
                ) from exc

    def build_image(self, ref: str, app_type: str, context: _Context) -> str:
        """Build, untagged (a failed build leaves no tag behind); the image id."""
        with self.phase("build"):
            self.progress(f"building {ref} ({app_type})")
            with context.tar.open("rb") as ctx:
                return self.engine.build(ctx, labels={}, log=self.log,
                                         buildargs=context.buildargs)

    def publish(self, image_id: str, ref: str, *, push: bool) -> str | None:
        """Tag the image `ref` and push it; its digest in the registry (None unpushed). If
        the push fails, the tag goes again: no release tag for an image the registry lacks."""
        self.engine.tag(image_id, ref)
        if not push:
            return None
        with self.phase("push"):
            self.progress(f"pushing {ref}")
            try:
                return self.engine.push(ref, self.log)
            except BaseException:
                self.engine.untag(ref)
                raise


# -- the context -----------------------------------------------------------------------------

def _label_line(labels: dict[str, str]) -> bytes:
    """The labels as one LABEL step at the end, rather than through the engine's `labels`
    parameter, which adds a step (a container) per label."""
    return b"\nLABEL " + " ".join(
        f"{k}={json.dumps(v)}" for k, v in sorted(labels.items())).encode() + b"\n"


def _own_dockerfile(root: Path, labels: dict[str, str]) -> Path:
    """A dockerfile app is its own context: its Dockerfile gets the LABEL line."""
    dockerfile = root / "Dockerfile"
    own = dockerfile.read_bytes()
    dockerfile.unlink()  # never write through a link, even one that stays inside
    dockerfile.write_bytes(own.rstrip(b"\n") + _label_line(labels))
    return root


def _template_context(plan: types.Plan, root: Path, context: Path, config: BuildConfig,
                      labels: dict[str, str]) -> None:
    """Make `context`: the type's template, filled, as Dockerfile and the app in app/."""
    assert plan.command is not None
    context.mkdir(mode=0o700)
    root.rename(context / "app")
    text = dockerfiles.render(dockerfiles.read(f"app/{plan.template}"),
                              base=config.base_image(plan.type),
                              cmd=types.cmd_instruction(plan.command))
    (context / "Dockerfile").write_bytes(text.rstrip("\n").encode() + _label_line(labels))


def _pip_settings(context: Path, config: BuildConfig) -> dict[str, str]:
    """What a python app whose libraries pip installs at build time needs: the CA bundle
    pip trusts (an empty file: the system's) and the index, as a build arg."""
    ca = b""
    if config.pip_ca_bundle:
        try:
            ca = Path(config.pip_ca_bundle).read_bytes()
        except OSError as exc:
            raise InvalidInput("pip_ca_bundle", f"cannot read {config.pip_ca_bundle}: "
                               f"{exc.strerror}") from exc
    (context / "dinp-ca.pem").write_bytes(ca)
    return {"PIP_INDEX_URL": config.pip_index_url} if config.pip_index_url else {}


def _tar(directory: Path, dest: Path) -> None:
    """An uncompressed tar of `directory`'s contents for the engine, owned by root."""
    def owned_by_root(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        return info

    with tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as tar:
        for child in sorted(directory.iterdir()):
            tar.add(child, arcname=child.name, recursive=True, filter=owned_by_root)
