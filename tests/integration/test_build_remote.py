"""`dinp build serve` and `dinp build PATH --remote URL`: a remote build equals a local one.

The service runs as a real `dinp build serve` process; the client is the real `dinp`
executable. Local and remote builds of one archive must give the same kind of result
(type, archive sha256, image name) and images that serve the same page; failures must
come back with the same message and exit code as a local build's.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dinp.build.engine import Engine
from tests.integration.builds import REGISTRY, http_get, serve, tgz
from tests.support import DINP, Proc, base_env, free_port, wait_for

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """A `dinp build serve` on a free port; yields (url, token)."""
    tmp = tmp_path_factory.mktemp("buildservice")
    token = secrets.token_hex(16)
    port = free_port()
    env = base_env(tmp, DINP_BUILD_TOKEN=token, DINP_REGISTRY=REGISTRY,
                   DINP_SERVE_LISTEN=f"127.0.0.1:{port}", DINP_MAX_UPLOAD_MB="8",
                   DINP_TMP_DIR=str(tmp))
    proc = Proc("build-serve", ["build", "serve"], env, tmp / "serve.log").start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: subprocess.run(["curl", "-fs", f"{url}/api/v1/health"],
                                        capture_output=True).returncode == 0,
                 20, "the build service to answer")
        yield url, token
        leftovers = [p.name for p in tmp.iterdir() if p.name.startswith("dinp-")]
        assert leftovers == [], "the service left build or upload files behind"
    finally:
        assert proc.stop(), "dinp build serve must exit by itself on SIGTERM"
        print(proc.output()[-3000:])


def dinp(*args: str, token: str = "") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DINP_")}
    env.update(DINP_REGISTRY=REGISTRY, COLUMNS="200")
    if token:
        env["DINP_BUILD_TOKEN"] = token
    return subprocess.run([DINP, "build", *args], env=env, capture_output=True, text=True,
                          timeout=300)


def test_remote_build_equals_local_build(
    service: tuple[str, str], engine: Engine, base_images: None,
    archives: dict[str, Path], app_name: Callable[[], str],
) -> None:
    url, token = service
    app = app_name()
    local = dinp(str(archives["python"]), "--app", app, "--version", "local", "--json")
    remote = dinp(str(archives["python"]), "--app", app, "--version", "remote", "--json",
                  "--remote", url, token=token)
    assert local.returncode == 0, local.stderr
    assert remote.returncode == 0, remote.stderr
    a, b = json.loads(local.stdout), json.loads(remote.stdout)
    assert set(a) == set(b)  # the same result document
    assert (a["type"], a["sha256"], a["pushed"]) == (b["type"], b["sha256"], b["pushed"])
    assert b["image"] == f"{REGISTRY}/{app}:remote" and b["digest"].startswith("sha256:")
    # Both images hold the same app: each, pulled back from the registry, serves the page.
    pages = []
    for result in (a, b):
        engine.api.remove_image(result["image"], force=True)
        engine.pull(result["image"], lambda line: None)
        container, port = serve(engine, result["image"], app)
        try:
            _, page = wait_for(lambda p=port: (lambda r: r if r[0] == 200 else None)(
                http_get(p)), 20, "the built app to answer")
            pages.append(re.sub(r"instance \S+", "instance …", page))  # one per serve
        finally:
            engine.api.remove_container(container, force=True)
    assert pages[0] == pages[1] and "hello from python" in pages[0]


def test_remote_build_streams_the_build_log(
    service: tuple[str, str], base_images: None, archives: dict[str, Path],
    app_name: Callable[[], str],
) -> None:
    url, token = service
    done = dinp(str(archives["static"]), "--app", app_name(), "--version", "1", "--remote",
                url, token=token)
    assert done.returncode == 0, done.stderr
    assert "Step 1/" in done.stderr  # the engine's log, relayed line by line
    assert done.stdout.strip().startswith(f"{REGISTRY}/")


def test_remote_errors_are_the_local_errors(
    service: tuple[str, str], base_images: None, tmp_path: Path,
    app_name: Callable[[], str],
) -> None:
    url, token = service
    app = app_name()
    hostile = tgz(tmp_path / "evil.tar.gz", {"../escape.txt": b"x", "index.html": b"hi"})
    broken = tmp_path / "broken.tar.gz"
    broken.write_bytes(b"\x1f\x8b\x08\x00 not really gzip")
    failing = tgz(tmp_path / "failing.tar.gz", {
        "Dockerfile": b"FROM dinp/busybox:1\nRUN echo about to fail && exit 3\n"})
    for archive in (hostile, broken, failing):
        local = dinp(str(archive), "--app", app, "--version", "1")
        remote = dinp(str(archive), "--app", app, "--version", "1", "--remote", url,
                      token=token)
        assert local.returncode != 0
        assert remote.returncode == local.returncode, (archive.name, remote.stderr)
        first = local.stderr.strip().splitlines()[-1]
        assert first.split(":")[0] in remote.stderr, (local.stderr, remote.stderr)
    assert "about to fail" in remote.stderr  # a failed step shows its output remotely too


def test_bad_token_and_oversized_upload_are_refused(
    service: tuple[str, str], archives: dict[str, Path], tmp_path: Path,
) -> None:
    url, token = service
    bad = dinp(str(archives["static"]), "--app", "web", "--version", "1", "--remote", url,
               token="wrong")
    assert bad.returncode == 5 and "invalid or missing build token" in bad.stderr
    big = tmp_path / "big.tar.gz"
    big.write_bytes(os.urandom(9 << 20))  # over the service's 8 MB
    refused = dinp(str(big), "--app", "web", "--version", "1", "--remote", url, token=token)
    assert refused.returncode == 2 and "larger than 8 MB" in refused.stderr
    down = dinp(str(archives["static"]), "--app", "web", "--version", "1", "--remote",
                f"http://127.0.0.1:{free_port()}", token=token)
    assert down.returncode == 6 and "build service" in down.stderr
