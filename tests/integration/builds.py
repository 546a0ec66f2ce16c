"""What the build tests share: the example archives, the engine and registry, unique app
names whose images and registry manifests are removed afterwards, and small helpers to
run a built image. The fixtures are made visible to every test by conftest.py."""

from __future__ import annotations

import contextlib
import io
import os
import secrets
import subprocess
import tarfile
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dinp.build import base_images as baseimages
from dinp.build.engine import Engine
from dinp.config import BuildConfig
from dinp.container import DockerRuntime
from dinp.errors import Unavailable
from dinp.sandbox import Policy
from dinp.wire import Assignment
from tests.support import TEST_LABEL, TEST_NETWORK, delete_from_registry

REGISTRY = "127.0.0.1:5000"
ROOT = Path(__file__).resolve().parents[2]
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
SERVE_CLUSTER = secrets.token_hex(8)  # the cluster `serve` starts containers for
EXPECTED = {
    "binary": "hello from a static binary",
    "war": "hello from a war on Tomcat",
    "python": "hello from python",
    "node": "hello from node",
    "php": "hello from php",
    "static": "hello from a static site",
    "dockerfile": "hello from a Dockerfile app",
}


# -- fixtures --------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def engine() -> Iterator[Engine]:
    try:
        e = Engine()
    except Unavailable as exc:
        pytest.skip(str(exc))
    try:
        urllib.request.urlopen(f"http://{REGISTRY}/v2/", timeout=3).close()
    except OSError as exc:
        e.close()
        pytest.skip(f"no registry at {REGISTRY} (scripts/setup.sh services): {exc}")
    try:
        yield e
    finally:
        e.close()


@pytest.fixture(scope="session")
def base_images(engine: Engine) -> None:
    """Every type's base image, current and in the registry (made once, if ever)."""
    baseimages.ensure(BuildConfig(registry=REGISTRY), engine=engine)
    subprocess.run(["bash", str(ROOT / "scripts" / "images.sh")], check=True,
                   capture_output=True)  # dinp/busybox:1 for the dockerfile example


@pytest.fixture(scope="session")
def archives(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("examples")
    subprocess.run(["bash", str(ROOT / "examples" / "build.sh"), str(out)], check=True,
                   capture_output=True)
    found = {p.name.split(".")[0]: p for p in out.iterdir()}
    assert set(found) == set(EXPECTED)
    return found


@pytest.fixture
def build_tmp(tmp_path: Path) -> Iterator[Path]:
    """The builds' temporary directory: it must be empty again after every build."""
    path = tmp_path / "builds"
    path.mkdir()
    yield path
    assert list(path.iterdir()) == [], "a build left files behind"


@pytest.fixture
def config(build_tmp: Path) -> BuildConfig:
    return BuildConfig(registry=REGISTRY, tmp_dir=str(build_tmp),
                       pip_ca_bundle=CA_BUNDLE if os.path.exists(CA_BUNDLE) else "")


@pytest.fixture
def app_name(engine: Engine) -> Iterator[Callable[[], str]]:
    """Makes unique app names; their local images, test containers and registry
    manifests are removed afterwards."""
    made: list[str] = []

    def make() -> str:
        made.append(f"tb-{secrets.token_hex(4)}")
        return made[-1]

    yield make
    for name in made:
        for label in (f"{TEST_LABEL}={name}", f"io.dinp.node={name}"):
            for c in engine.api.containers(all=True, filters={"label": label}):
                with contextlib.suppress(Exception):
                    engine.api.remove_container(c["Id"], force=True)
        for image in engine.api.images(name=f"{REGISTRY}/{name}"):
            with contextlib.suppress(Exception):
                engine.api.remove_image(image["Id"], force=True)
        delete_from_registry(REGISTRY, name)


def http_get(port: int, path: str = "/") -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""
    except OSError:
        return 0, ""


def serve(engine: Engine, ref: str, name: str) -> tuple[str, int]:
    """Run `ref` as dinp's agent does, with `DockerRuntime.start` (confined, PORT=9000,
    256 MB), published on an ephemeral port of 127.0.0.1; (container id, host port). The
    container's node is `name`, so the app_name fixture removes it."""
    runtime = DockerRuntime(node=name, advertise="127.0.0.1", cluster=SERVE_CLUSTER,
                            policy=Policy(network=TEST_NETWORK))
    try:
        c = runtime.start(Assignment(id=secrets.token_hex(5), app=name, release=1,
                                     image=ref, memory_mb=256, port=9000, env={},
                                     health_path=None))
    finally:
        runtime.close()
    assert c.host_port is not None
    return c.id, c.host_port


def tgz(path: Path, files: dict[str, bytes], modes: dict[str, int] | None = None) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = (modes or {}).get(name, 0o644)
            tar.addfile(info, io.BytesIO(data))
    return path


