"""The base image of every app type, made from Debian's packages with no container registry
to pull from: `dinp build base-images`.

1. The Debian root, `<registry>/dinp/debian:<suite>`: `debootstrap --variant=minbase` into
   the command's own temporary directory, the files of templates/base/debian/rootfs on top
   (no services started by packages, no recommends, no docs), then `docker import`.
2. One image per type FROM that root, from templates/base/<type>.Dockerfile and the
   files in templates/base/<type>/, each apt-get installing its runtime from Debian.
3. Each is tagged `<registry>/dinp/<type>:<suite>` and pushed.

Each image is labelled `io.dinp.recipe` with a hash of everything it is made from (its
template and files, and the recipe of the Debian root). So a second run is quick: an image
present with its current recipe is kept (and pushed only if the registry lacks it), and one
the registry holds with its current recipe is pulled instead of built. A type whose base
image is set in [build] of dinp.toml is the operator's own and is left alone.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from dinp.build import dockerfiles
from dinp.build.engine import Engine, Log, check_registry, no_log, registry_reachable
from dinp.build.types import BASE_TYPES
from dinp.config import BuildConfig
from dinp.docker_engine import parse_image, split_ref
from dinp.errors import BuildFailed, InvalidInput

LABEL_RECIPE = "io.dinp.recipe"
# Bump to rebuild every base image after a change the templates do not show.
RECIPE_VERSION = "1"
ROOTFS_OVERLAY = "base/debian/rootfs"
# Left out of the imported root: the engine provides them in each container.
_TRIM = ("var/lib/apt/lists", "var/cache/apt/archives", "usr/share/doc", "usr/share/man",
         "usr/share/info", "usr/share/locale")


@dataclass(frozen=True, kw_only=True)
class Recipe:
    type: str  # "debian" (the root) or an app type
    ref: str
    digest: str


@dataclass(frozen=True, kw_only=True)
class Outcome:
    type: str
    ref: str
    action: str  # present | pulled | built | skipped
    pushed: bool
    seconds: float
    note: str = ""


def debian_recipe(config: BuildConfig) -> Recipe:
    overlay = dockerfiles.files_under(ROOTFS_OVERLAY)
    parts: list[str | bytes] = [RECIPE_VERSION, config.debian_suite, config.debian_mirror]
    for path, data in overlay.items():
        parts += [path, data]
    return Recipe(type="debian", ref=f"{config.registry}/dinp/debian:{config.debian_suite}",
                  digest=dockerfiles.digest(*parts))


def type_recipe(config: BuildConfig, app_type: str, debian: Recipe) -> Recipe:
    parts: list[str | bytes] = [debian.digest, dockerfiles.read(f"base/{app_type}.Dockerfile")]
    for path, data in dockerfiles.files_under(f"base/{app_type}").items():
        parts += [path, data]
    return Recipe(type=app_type, ref=config.default_base_image(app_type),
                  digest=dockerfiles.digest(*parts))


def ensure(
    config: BuildConfig,
    *,
    types: Sequence[str] | None = None,
    push: bool | None = None,
    force: bool = False,
    log: Log = no_log,
    progress: Log = no_log,
    engine: Engine | None = None,
) -> list[Outcome]:
    """Make sure the base image of each of `types` (default: all) is current on the engine
    and, when pushing, in the registry; build only what is missing or out of date."""
    check_registry(config.registry)
    wanted = list(types or BASE_TYPES)
    for t in wanted:
        if t not in BASE_TYPES:
            raise InvalidInput("type", f"{t!r} has no base image; types: "
                               f"{', '.join(BASE_TYPES)}")
    push = config.push if push is None else push
    outcomes: list[Outcome] = []
    with contextlib.ExitStack() as stack:
        if engine is None:
            engine = stack.enter_context(Engine(config.docker_host))
        if push:
            registry_reachable(config.registry)
        tmp = Path(tempfile.mkdtemp(prefix="dinp-base-", dir=config.tmp_dir or None))
        stack.callback(_remove, tmp)

        debian = debian_recipe(config)
        own = [t for t in wanted if not getattr(config, f"base_{t}")]
        for t in wanted:
            if t not in own:
                outcomes.append(Outcome(type=t, ref=config.base_image(t), action="skipped",
                                        pushed=False, seconds=0.0,
                                        note=f"base_{t} is set in [build]"))
        if not own:
            return outcomes
        # --force with --type rebuilds those types, not the Debian root they share.
        outcomes.insert(0, _ensure_one(engine, debian, config, tmp, push=push,
                                       force=force and not types, debian=debian, log=log,
                                       progress=progress))
        for t in own:
            recipe = type_recipe(config, t, debian)
            outcomes.append(_ensure_one(engine, recipe, config, tmp, push=push, force=force,
                                        debian=debian, log=log, progress=progress))
    return outcomes


def _ensure_one(engine: Engine, recipe: Recipe, config: BuildConfig, tmp: Path, *,
                push: bool, force: bool, debian: Recipe, log: Log, progress: Log) -> Outcome:
    start = time.monotonic()
    action = "present"
    if force or not _current(engine, recipe):
        action = "built"
        if not force and push and engine.remote_digest(recipe.ref):
            progress(f"pulling {recipe.ref}")
            with contextlib.suppress(BuildFailed):
                engine.pull(recipe.ref, log)
            if _current(engine, recipe):
                action = "pulled"
        if action == "built":
            progress(f"building {recipe.ref}")
            if recipe.type == "debian":
                _build_debian(engine, recipe, config, tmp, log)
            else:
                _build_type(engine, recipe, debian, log)
    pushed = False
    if push and not _in_registry(engine, recipe.ref):
        progress(f"pushing {recipe.ref}")
        engine.push(recipe.ref, log)
        pushed = True
    return Outcome(type=recipe.type, ref=recipe.ref, action=action, pushed=pushed,
                   seconds=time.monotonic() - start)


def _current(engine: Engine, recipe: Recipe) -> bool:
    labels = engine.labels(recipe.ref)
    return labels is not None and labels.get(LABEL_RECIPE) == recipe.digest


def _in_registry(engine: Engine, ref: str) -> bool:
    """Whether the registry holds exactly the local image of `ref`."""
    remote = engine.remote_digest(ref)
    info = engine.image(ref)
    if not remote or info is None:
        return False
    return parse_image(ref).at(remote) in (info.get("RepoDigests") or [])


# -- the Debian root -----------------------------------------------------------------------

def _build_debian(engine: Engine, recipe: Recipe, config: BuildConfig, tmp: Path,
                  log: Log) -> None:
    if os.geteuid() != 0:
        raise BuildFailed("making the Debian root needs root (debootstrap)",
                          hint="Run `dinp build base-images` as root, or pull the base "
                          "images from a registry that has them.")
    debootstrap = shutil.which("debootstrap") or (
        "/usr/sbin/debootstrap" if Path("/usr/sbin/debootstrap").exists() else None)
    if debootstrap is None:
        raise BuildFailed("debootstrap is not installed", hint="apt-get install debootstrap")
    rootfs = tmp / "rootfs"
    try:
        _run([debootstrap, "--variant=minbase", config.debian_suite, str(rootfs),
              config.debian_mirror], log, what="debootstrap")
        for path, data in dockerfiles.files_under(ROOTFS_OVERLAY).items():
            target = rootfs / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            target.chmod(0o755 if data.startswith(b"#!") else 0o644)
        for path in _TRIM:
            for child in (rootfs / path).glob("*"):
                if child.name not in ("partial", "locale.alias"):
                    _remove(child)
        (rootfs / "usr/share/man/man1").mkdir(parents=True, exist_ok=True)
        log("importing the Debian root into the engine")
        tar = subprocess.Popen(
            ["tar", "-C", str(rootfs), "--numeric-owner", "--exclude=./dev/*",
             "--exclude=./proc/*", "--exclude=./sys/*", "-c", "."],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        assert tar.stdout is not None
        repo, tag = split_ref(recipe.ref)
        with engine.errors():
            engine.api.import_image(
                src=tar.stdout, stream_src=True, repository=repo, tag=tag,
                changes=[f"LABEL {LABEL_RECIPE}={recipe.digest}",
                         "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                         'CMD ["bash"]'],
            )
        _, err = tar.communicate()
        if tar.returncode != 0:
            raise BuildFailed(f"tar of the Debian root failed: {err.decode(errors='replace')}")
        if not _current(engine, recipe):
            raise BuildFailed(f"docker import did not produce {recipe.ref}")
    finally:
        _remove(rootfs)


def _run(argv: list[str], log: Log, *, what: str) -> None:
    """Run a command, passing its output to `log`; BuildFailed with its tail if it fails."""
    tail: deque[str] = deque(maxlen=25)
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, text=True, errors="replace")
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip("\n")
        tail.append(line)
        log(line)
    if proc.wait() != 0:
        output = "\n".join(f"  | {line}" for line in tail)
        raise BuildFailed(f"{what} failed (exit {proc.returncode})\n{output}",
                          hint="Can this machine reach the Debian mirror (debian_mirror in "
                          "[build])?")


def _remove(path: Path) -> None:
    """Remove a directory tree, unmounting first what a failed debootstrap left mounted in
    it (removing files below a mounted /proc or /sys would fail, or worse)."""
    prefix = str(path.resolve()) + os.sep
    try:
        with open("/proc/mounts") as f:
            mounts = [line.split()[1] for line in f]
    except OSError:
        mounts = []
    for mount in sorted((m for m in mounts if m.startswith(prefix)), reverse=True):
        subprocess.run(["umount", "-l", mount], check=False, capture_output=True)
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    elif path.exists():
        shutil.rmtree(path, ignore_errors=True)


# -- the image of each type ------------------------------------------------------------------

def _build_type(engine: Engine, recipe: Recipe, debian: Recipe, log: Log) -> None:
    dockerfile = dockerfiles.render(dockerfiles.read(f"base/{recipe.type}.Dockerfile"),
                                    debian=debian.ref)
    files = {"Dockerfile": dockerfile.encode(), **dockerfiles.files_under(f"base/{recipe.type}")}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o755 if data.startswith(b"#!") else 0o644
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    image_id = engine.build(buf, labels={LABEL_RECIPE: recipe.digest}, log=log)
    engine.tag(image_id, recipe.ref)
