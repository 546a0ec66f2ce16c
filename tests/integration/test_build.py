"""`dinp build` against the real engine and the real registry (127.0.0.1:5000).

Each example app is built from its archive (examples/build.sh), pushed, removed locally,
pulled back from the registry, started as the agent starts it (`DockerRuntime.start`:
read-only root, not root, no capability, PORT set), checked healthy and asked for a page;
war and php also write where their image says they do (compiled JSPs, sessions). Every failure the
builder knows (hostile archives, undetectable types, a failing step, an unreachable
engine or registry, a refused push) must leave no image tagged as the release and nothing
in the build's temporary directory. Images and registry manifests made here are removed.
"""

from __future__ import annotations

import asyncio
import http.server
import io
import json
import os
import re
import subprocess
import tarfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from dinp.build import base_images as baseimages
from dinp.build import builder
from dinp.build.archive import BadArchive, file_sha256
from dinp.build.engine import Engine
from dinp.config import BuildConfig
from dinp.errors import BuildFailed, InvalidInput, Unavailable
from dinp.health import check
from tests.integration.builds import EXPECTED, REGISTRY, ROOT, http_get, serve, tgz
from tests.support import DINP, free_port, wait_until

pytestmark = pytest.mark.docker

# -- every example type, end to end ----------------------------------------------------------

@pytest.mark.parametrize("kind", sorted(EXPECTED))
def test_example_is_built_pushed_pulled_back_and_serves_on_port(
    kind: str, engine: Engine, base_images: None, archives: dict[str, Path],
    config: BuildConfig, app_name: Callable[[], str],
) -> None:
    name = app_name()
    archive = archives[kind]
    lines: list[str] = []

    result = builder.build(archive, app=name, version="1.0", config=config, log=lines.append)

    ref = f"{REGISTRY}/{name}:1.0"
    assert result.image == ref and result.type == kind and result.pushed
    assert result.digest is not None and result.digest.startswith("sha256:")
    assert result.reference == f"{REGISTRY}/{name}@{result.digest}"
    assert any(line.startswith("Step 1/") for line in lines)  # the log was streamed
    labels = engine.labels(ref) or {}
    assert labels[builder.LABEL_APP] == name
    assert labels[builder.LABEL_VERSION] == "1.0"
    assert labels[builder.LABEL_SHA256] == file_sha256(archive) == result.sha256
    assert labels[builder.LABEL_TYPE] == kind
    built = datetime.strptime(labels[builder.LABEL_TIME], "%Y-%m-%dT%H:%M:%SZ")
    assert abs((datetime.now(UTC).replace(tzinfo=None) - built).total_seconds()) < 300

    # A clean tag: forget the local image, take it back from the registry.
    engine.api.remove_image(ref)
    assert engine.image(ref) is None
    engine.pull(ref)
    info = engine.image(ref) or {}
    assert f"{REGISTRY}/{name}@{result.digest}" in info["RepoDigests"]

    # Served as the agent serves it: confined (read-only root, not root, no capability).
    cid, port = serve(engine, ref, name)
    timeout = 60 if kind == "war" else 20
    assert wait_until(lambda: asyncio.run(check("127.0.0.1", port, None)), timeout=timeout), \
        f"{kind} did not become healthy on $PORT"
    assert wait_until(lambda: http_get(port)[0] == 200, timeout=timeout), \
        f"{kind} did not answer on $PORT"
    assert EXPECTED[kind] in http_get(port)[1]
    inspected = engine.api.inspect_container(cid)
    assert inspected["HostConfig"]["ReadonlyRootfs"] is True
    assert inspected["HostConfig"]["CapDrop"] == ["ALL"]
    assert inspected["Config"]["User"] not in ("", "root", "0", "0:0")
    assert inspected["State"]["Running"]
    if kind == "war":  # a JSP is compiled into Tomcat's work directory, a tmpfs
        status, body = http_get(port, "/hello.jsp")
        assert status == 200 and "hello from JSP on Apache Tomcat" in body
        code, out = engine.client.containers.get(cid).exec_run(
            ["sh", "-c", "ls /var/cache/tomcat10/Catalina/localhost/ROOT/org/apache/jsp"])
        assert code == 0 and "hello_jsp.class" in out.decode(), out
    if kind == "php":  # sessions are written where PHP keeps them, a tmpfs
        code, out = engine.client.containers.get(cid).exec_run(["php", "-r", (
            'session_id("dinptest"); session_start(); $_SESSION["n"] = 1; '
            'session_write_close(); echo file_get_contents(session_save_path() '
            '. "/sess_dinptest");')])
        assert (code, out.decode()) == (0, "n|i:1;"), out


def test_a_directory_and_its_tarball_build_alike(
    engine: Engine, base_images: None, config: BuildConfig, app_name: Callable[[], str],
) -> None:
    name = app_name()
    result = builder.build(ROOT / "examples" / "static", app=name, version="d1",
                           config=config, push=False)
    assert result.type == "static" and not result.pushed and result.digest is None
    assert result.reference == f"{REGISTRY}/{name}:d1"
    assert engine.image(result.image) is not None
    _, port = serve(engine, result.image, name)
    assert wait_until(lambda: "static site" in http_get(port)[1], timeout=20)


def test_requirements_txt_is_installed_at_build_time(
    engine: Engine, base_images: None, config: BuildConfig, app_name: Callable[[], str],
    tmp_path: Path,
) -> None:
    """The slower way for python: pip installs requirements.txt into vendor/. Needs an
    index the engine's containers can reach (PyPI here, or pip_index_url)."""
    app_py = (ROOT / "examples" / "python" / "app.py").read_bytes()
    archive = tgz(tmp_path / "req.tar.gz", {"app.py": app_py,
                                            "requirements.txt": b"bottle==0.13.4\n"})
    name = app_name()
    try:
        result = builder.build(archive, app=name, version="1", config=config, push=False)
    except BuildFailed as exc:
        if "Could not fetch URL" in str(exc) or "Max retries" in str(exc):
            pytest.skip(f"no package index reachable from containers: {exc.message[:200]}")
        raise
    _, port = serve(engine, result.image, name)
    assert wait_until(lambda: "hello from python" in http_get(port)[1], timeout=20)


# -- bad input: one clear error, no release tag, nothing left behind -------------------------

def hostile(kind: str, path: Path) -> Path:
    """Archives that try to escape (tarfile makes them as an attacker would)."""
    with tarfile.open(path, "w:gz") as tar:
        ok = tarfile.TarInfo("index.html")
        ok.size = 2
        tar.addfile(ok, io.BytesIO(b"hi"))
        info = tarfile.TarInfo({"absolute": "/tmp/dinp-evil", "dotdot": "../../dinp-evil",
                                "symlink": "link", "hardlink": "hard", "device": "dev",
                                "through-link": "up"}[kind])
        if kind == "symlink":
            info.type, info.linkname = tarfile.SYMTYPE, "../../../../etc"
        elif kind == "hardlink":
            info.type, info.linkname = tarfile.LNKTYPE, "/etc/passwd"
        elif kind == "device":
            info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
        elif kind == "through-link":
            info.type, info.linkname = tarfile.SYMTYPE, "a/.."
            tar.addfile(info)
            info = tarfile.TarInfo("a")
            info.type, info.linkname = tarfile.SYMTYPE, "."
            tar.addfile(info)
            info = tarfile.TarInfo("up/dinp-evil")
        data = b"pwned"
        if info.isreg():
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        else:
            tar.addfile(info)
    return path


@pytest.mark.parametrize(
    ("kind", "message"),
    [("absolute", "absolute path"), ("dotdot", "'..'"), ("symlink", "points outside"),
     ("hardlink", "hard link"), ("device", "device file"), ("through-link", "outside")],
)
def test_hostile_archives_are_refused(
    kind: str, message: str, engine: Engine, config: BuildConfig,
    app_name: Callable[[], str], tmp_path: Path,
) -> None:
    name = app_name()
    with pytest.raises(BadArchive, match=message):
        builder.build(hostile(kind, tmp_path / "evil.tar.gz"), app=name, version="1",
                      config=config)
    assert engine.image(f"{REGISTRY}/{name}:1") is None
    assert not Path("/tmp/dinp-evil").exists()
    assert not (tmp_path / "dinp-evil").exists()


def test_a_gzip_bomb_is_refused_while_streaming(
    engine: Engine, build_tmp: Path, app_name: Callable[[], str], tmp_path: Path,
) -> None:
    path = tmp_path / "bomb.tar.gz"
    size = 64 << 20
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        info = tarfile.TarInfo("bomb")
        info.size = size
        tar.addfile(info, io.BytesIO(bytes(size)))
    conf = BuildConfig(registry=REGISTRY, tmp_dir=str(build_tmp), max_unpacked_mb=8)
    name = app_name()
    with pytest.raises(BadArchive, match="expands past 8 MB"):
        builder.build(path, app=name, version="1", config=conf)
    assert engine.image(f"{REGISTRY}/{name}:1") is None


@pytest.mark.parametrize("cut", ["truncated", "corrupt"])
def test_broken_archives_are_refused(
    cut: str, engine: Engine, config: BuildConfig, archives: dict[str, Path],
    app_name: Callable[[], str], tmp_path: Path,
) -> None:
    data = archives["python"].read_bytes()
    broken = tmp_path / "broken.tar.gz"
    broken.write_bytes(data[: len(data) // 2] if cut == "truncated"
                       else data[:100] + os.urandom(len(data) - 100))
    with pytest.raises(BadArchive, match="corrupt or truncated"):
        builder.build(broken, app=app_name(), version="1", config=config)


def test_undetectable_type_and_missing_command(
    engine: Engine, config: BuildConfig, app_name: Callable[[], str], tmp_path: Path,
) -> None:
    with pytest.raises(InvalidInput, match="cannot tell what kind of app"):
        builder.build(tgz(tmp_path / "a.tar.gz", {"notes.txt": b"x"}), app=app_name(),
                      version="1", config=config)
    elf = tgz(tmp_path / "b.tar.gz", {"server": b"\x7fELF" + bytes(60)}, {"server": 0o755})
    with pytest.raises(InvalidInput, match="needs a Procfile with a `web:` line or --cmd"):
        builder.build(elf, app=app_name(), version="1", config=config)


@pytest.mark.parametrize(
    ("app", "version", "field"),
    [("Bad_Name", "1", "app"), ("api", "1", "app"), ("ok", "-1", "version"),
     ("ok", "a/b", "version"), ("ok", "latest", "version")],
)
def test_invalid_app_name_or_version(app: str, version: str, field: str,
                                     config: BuildConfig, archives: dict[str, Path]) -> None:
    with pytest.raises(InvalidInput) as info:
        builder.build(archives["static"], app=app, version=version, config=config)
    assert info.value.field == field


def test_a_failing_step_names_the_step_and_shows_its_output(
    engine: Engine, base_images: None, config: BuildConfig, app_name: Callable[[], str],
    tmp_path: Path,
) -> None:
    archive = tgz(tmp_path / "fail.tar.gz", {"Dockerfile": (
        b"FROM dinp/busybox:1\nRUN echo preparing\n"
        b"RUN echo the-reason-it-broke && exit 3\nCMD [\"true\"]\n")})
    name = app_name()
    with pytest.raises(BuildFailed) as info:
        builder.build(archive, app=name, version="1", config=config)
    text = str(info.value)
    assert re.search(r"step 3/\d+: RUN echo the-reason-it-broke", text)
    assert "the-reason-it-broke" in text.split("\n", 2)[2]  # its output is shown
    assert "returned a non-zero code: 3" in text
    assert info.value.exit_code == 8
    assert engine.image(f"{REGISTRY}/{name}:1") is None


def test_a_missing_base_image_says_how_to_make_it(
    engine: Engine, config: BuildConfig, archives: dict[str, Path],
    app_name: Callable[[], str],
) -> None:
    conf = BuildConfig(registry=REGISTRY, tmp_dir=config.tmp_dir,
                       base_static=f"{REGISTRY}/dinp/no-such-base:1")
    with pytest.raises(BuildFailed, match="no-such-base:1 is not on this engine") as info:
        builder.build(archives["static"], app=app_name(), version="1", config=conf)
    assert "dinp build base-images" in str(info.value)


def test_unreachable_registry(config: BuildConfig, archives: dict[str, Path],
                              engine: Engine) -> None:
    conf = BuildConfig(registry=f"127.0.0.1:{free_port()}", tmp_dir=config.tmp_dir)
    with pytest.raises(Unavailable, match=r"registry .* is unreachable") as info:
        builder.build(archives["static"], app="tb-noreg", version="1", config=conf)
    assert info.value.exit_code == 6


def test_unreachable_engine(config: BuildConfig, archives: dict[str, Path],
                            tmp_path: Path) -> None:
    conf = BuildConfig(registry=REGISTRY, tmp_dir=config.tmp_dir,
                       docker_host=f"unix://{tmp_path}/no-docker.sock")
    with pytest.raises(Unavailable, match=r"Docker engine .* is unreachable"):
        builder.build(archives["static"], app="tb-noengine", version="1", config=conf)


class _Refusing(http.server.BaseHTTPRequestHandler):
    """A 'registry' that answers every request with 403 (the engine retries a 500 for
    50 s before it gives up; a refusal is a refusal either way)."""

    def _refuse(self) -> None:
        self.send_response(403)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = _refuse

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_a_refused_push_leaves_no_release_tag(
    engine: Engine, base_images: None, config: BuildConfig, archives: dict[str, Path],
) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Refusing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    registry = f"127.0.0.1:{server.server_address[1]}"
    conf = BuildConfig(registry=registry, tmp_dir=config.tmp_dir,
                       base_static=config.base_image("static"))
    try:
        with pytest.raises((BuildFailed, Unavailable), match="push"):
            builder.build(archives["static"], app="tb-refused", version="1", config=conf)
        assert engine.image(f"{registry}/tb-refused:1") is None
    finally:
        server.shutdown()
        server.server_close()


# -- the CLI ---------------------------------------------------------------------------------

def dinp(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([DINP, *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, **(env or {})}, cwd="/")


def test_cli_build_json_and_quiet(base_images: None, archives: dict[str, Path],
                                  app_name: Callable[[], str], build_tmp: Path) -> None:
    name = app_name()
    env = {"DINP_TMP_DIR": str(build_tmp)}
    done = dinp("build", str(archives["node"]), "--app", name, "--version", "2",
                "--registry", REGISTRY, "--json", env=env)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["image"] == f"{REGISTRY}/{name}:2" and out["type"] == "node"
    assert out["digest"].startswith("sha256:") and out["pushed"] is True
    assert "Step 1/" in done.stderr  # the build log, on stderr

    quiet = dinp("build", str(archives["node"]), "-a", name, "-V", "3", "-q", env=env)
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stdout.strip().startswith(f"{REGISTRY}/{name}@sha256:")
    assert "Step" not in quiet.stderr


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--app", "Bad", "--version", "1"], 2, "not a valid app name"),
        (["--app", "ok", "--version", ".x"], 2, "not a valid version"),
        (["--app", "ok", "--version", "1", "--type", "rust"], 2, "not one of"),
        (["--app", "ok", "--version", "1", "--registry", "http://x/y"], 2, "host[:port]"),
    ],
)
def test_cli_rejects_bad_values_before_any_work(args: list[str], code: int, message: str,
                                                archives: dict[str, Path]) -> None:
    done = dinp("build", str(archives["static"]), *args)
    assert done.returncode == code
    assert message in " ".join(done.stderr.split())


def test_cli_errors_exit_with_their_code(archives: dict[str, Path], tmp_path: Path,
                                         build_tmp: Path) -> None:
    env = {"DINP_TMP_DIR": str(build_tmp)}

    def err(done: subprocess.CompletedProcess[str]) -> str:
        return " ".join(done.stderr.split())  # rich wraps long lines

    bad = hostile("dotdot", tmp_path / "evil.tar.gz")
    done = dinp("build", str(bad), "--app", "tb-evil", "--version", "1", env=env)
    assert done.returncode == 2 and "archive: entry" in err(done)
    assert err(done).count("error:") == 1  # one clear message

    done = dinp("build", str(archives["static"]), "-a", "tb-x", "-V", "1",
                env={**env, "DINP_DOCKER_HOST": f"unix://{tmp_path}/none.sock"})
    assert done.returncode == 6 and "Is dockerd running?" in err(done)

    done = dinp("build", str(tmp_path / "absent.tgz"), "-a", "tb-x", "-V", "1", env=env)
    assert done.returncode == 2 and "does not exist" in err(done)


def test_cli_base_images_is_quick_when_present(base_images: None) -> None:
    start = time.monotonic()
    done = dinp("build", "base-images", "--registry", REGISTRY, "--json")
    assert done.returncode == 0, done.stderr
    took = time.monotonic() - start
    rows = json.loads(done.stdout)
    assert [r["type"] for r in rows] == ["debian", "war", "binary", "python", "node", "php",
                                         "static"]
    assert {r["action"] for r in rows} == {"present"}
    assert not any(r["pushed"] for r in rows)
    assert took < 10


def test_base_images_skips_types_configured_elsewhere(engine: Engine, base_images: None) -> None:
    conf = BuildConfig(registry=REGISTRY, base_php="php:8.2-cli")
    outcomes = baseimages.ensure(conf, types=["php"], engine=engine)
    assert [(o.type, o.action) for o in outcomes] == [("php", "skipped")]


def test_base_images_rebuild_one_type_and_find_it_current_after(
    engine: Engine, base_images: None,
) -> None:
    conf = BuildConfig(registry=REGISTRY)
    lines: list[str] = []
    rebuilt = baseimages.ensure(conf, types=["static"], force=True, push=False,
                                engine=engine, log=lines.append)
    assert [(o.type, o.action) for o in rebuilt] == [("debian", "present"), ("static", "built")]
    assert any(line.startswith("Step 1/") for line in lines)
    recipe = baseimages.type_recipe(conf, "static", baseimages.debian_recipe(conf))
    labels = engine.labels(recipe.ref) or {}
    assert labels[baseimages.LABEL_RECIPE] == recipe.digest
    again = baseimages.ensure(conf, types=["static"], engine=engine)
    assert [o.action for o in again] == ["present", "present"]
